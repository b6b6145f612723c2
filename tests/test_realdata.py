"""The dataset loaders of coati_nb.dataset on the real public samples beside the project (see ../shared/data/README.md).

The folder is named by the environment variable COATI_NB_REALDATA (a relative value is taken from the project root);
unset, it defaults to ../shared/data. If the folder is missing the tests skip locally, but fail when CI is set.
The files are only read, never copied into the repository. No test touches the network."""
import gzip, json, os, warnings
from pathlib import Path

os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest
import torch

from coati_nb.dataset import (IGNORE_INDEX, DataCollatorForPreferenceDataset, DataCollatorForPromptDataset,
                              DataCollatorForSupervisedDataset, HhRlhfDataset, PromptDataset, SupervisedDataset,
                              generate_prompt_dataset, read_rows)
from coati_nb.toy_task import format_prompt
from coati_nb.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def realdata_dir(env=None) -> Path | None:
    "The real-data folder, None when it is missing outside CI; an error when it is missing on CI."
    env = os.environ if env is None else env
    value = env.get('COATI_NB_REALDATA')
    path = Path(value) if value else ROOT.parent/'shared'/'data'
    if not path.is_absolute(): path = ROOT/path
    if path.is_dir(): return path
    if env.get('CI'):
        raise FileNotFoundError(f"real data folder {path} not found (COATI_NB_REALDATA={value!r}); CI must provide it")
    return None


@pytest.fixture(scope='module')
def tok():
    return load_tokenizer()


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rt', encoding='utf-8') as f: return [json.loads(l) for l in f if l.strip()]


def _dec(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def test_missing_folder_fails_on_ci_and_skips_locally(tmp_path):
    missing = str(tmp_path/'nope')
    with pytest.raises(FileNotFoundError, match='CI must provide it'):
        realdata_dir({'COATI_NB_REALDATA': missing, 'CI': 'true'})
    assert realdata_dir({'COATI_NB_REALDATA': missing}) is None
    assert realdata_dir({'COATI_NB_REALDATA': str(tmp_path)}) == tmp_path


# ---- Anthropic hh-rlhf (harmless-base test split) ----

def _hh_split(text):
    k = text.rindex('\n\nAssistant:') + len('\n\nAssistant:')
    return text[:k], text[k:]


def _hh_bad_rows(rows):
    "Rows a reward model cannot use: an empty last response, or chosen equal to rejected (diverging dialogues are kept)."
    bad = []
    for i, r in enumerate(rows):
        (_, c), (_, rj) = _hh_split(r['chosen']), _hh_split(r['rejected'])
        if not c.strip() or not rj.strip() or c == rj: bad.append(i)
    return bad


def test_hh_rlhf_reads_all_rows(real):
    path = real/'hh-rlhf-harmless-base'/'test.jsonl.gz'
    rows = read_rows(path)
    assert len(rows) == 1800
    assert rows == _jsonl(path)                        # the datasets loader gives exactly the file's rows
    assert read_rows(path, max_datasets_size=7) == rows[:7]


def test_hh_rlhf_bad_rows_named_or_skipped(real, tok):
    path = real/'hh-rlhf-harmless-base'/'test.jsonl.gz'
    bad = _hh_bad_rows(_jsonl(path))
    assert bad, 'the real file is known to hold rows with empty responses'
    with pytest.raises(ValueError, match=rf"test\.jsonl\.gz, row {bad[0]} \(0-based\)"):
        HhRlhfDataset(str(path), tok, 512)
    with pytest.warns(UserWarning, match=f'skipped {len(bad)} bad rows'):
        ds = HhRlhfDataset(str(path), tok, 512, skip_bad=True)
    assert ds.skipped == len(bad)
    assert len(ds) + ds.truncated_away == 1800 - len(bad)


def test_hh_rlhf_samples_decode_to_the_dialogues(real, tok):
    rows = _jsonl(real/'hh-rlhf-harmless-base'/'test.jsonl.gz')
    good = [r for i, r in enumerate(rows[:60]) if i not in set(_hh_bad_rows(rows[:60]))]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = HhRlhfDataset(good, tok, 4096)
    assert len(ds) == len(good) and ds.truncated == 0
    for s, r in zip(ds, good):
        for ids, mask, text in ((s['chosen_ids'], s['c_mask'], r['chosen']), (s['reject_ids'], s['r_mask'], r['rejected'])):
            assert ids[-1].item() == tok.eos_token_id                 # ends with the end token
            assert _dec(tok, ids) == text                            # prompt + response, nothing lost or added
            assert mask.tolist() == [1] * len(ids)


def test_hh_rlhf_truncation_keeps_responses(real, tok):
    rows = _jsonl(real/'hh-rlhf-harmless-base'/'test.jsonl.gz')[:300]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ours = HhRlhfDataset(rows, tok, 96, skip_bad=True)
        faithful = HhRlhfDataset(rows, tok, 96, skip_bad=True, faithful_truncation=True)
    good = [r for i, r in enumerate(rows) if i not in set(_hh_bad_rows(rows))]
    n_resp = lambda t: len(tok(_hh_split(t)[1], add_special_tokens=False)['input_ids'])
    too_long = sum(max(n_resp(r['chosen']), n_resp(r['rejected'])) + 2 >= 96 for r in good)   # + EOS + BOS
    assert ours.truncated_away == too_long and ours.truncated > 0   # only pairs whose response alone fills max_length
    assert faithful.truncated_away > too_long                       # right cuts lose whole responses
    kept = [r for r in good if max(n_resp(r['chosen']), n_resp(r['rejected'])) + 2 < 96]
    assert len(kept) == len(ours)
    for s, r in zip(ours, kept):
        assert len(s['chosen_ids']) <= 96 and len(s['reject_ids']) <= 96
        assert not torch.equal(s['chosen_ids'], s['reject_ids'])
        assert s['chosen_ids'][-1].item() == tok.eos_token_id
        n_c, n_r = n_resp(r['chosen']), n_resp(r['rejected'])
        assert torch.equal(s['chosen_ids'][:-n_c - 1], s['reject_ids'][:-n_r - 1])   # one prompt window for both
    for s in faithful: assert s['chosen_ids'].shape == (96,)         # ColossalChat pads to max_length
    batch = next(iter(torch.utils.data.DataLoader(ours, batch_size=8, collate_fn=DataCollatorForPreferenceDataset(tok))))
    assert batch['chosen_ids'].shape == batch['reject_ids'].shape == batch['c_mask'].shape
    assert batch['chosen_ids'].shape[0] == 8 and batch['chosen_ids'].shape[1] <= 96
    assert (batch['c_mask'][:, 0] == 1).all()                        # right padding: real tokens first


# ---- InstructionWild seed prompts ----

@pytest.mark.parametrize('lang', ['en', 'ch'])
def test_instructionwild_prompts(real, tok, lang):
    path = real/'instructionwild'/f'seed_prompts_{lang}.jsonl'
    raw = _jsonl(path)
    assert len(raw) == 429
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = PromptDataset(str(path), tok, max_length=1024)
        bare = PromptDataset(str(path), tok, max_length=1024, use_template=False)
    assert len(ds) == len(bare) == 429
    fits = [i for i in range(429) if len(ds[i]['input_ids']) < 1024]
    assert len(fits) > 400
    for i in fits[:50]:
        assert _dec(tok, ds[i]['input_ids']) == format_prompt(raw[i]['instruction'])
        assert _dec(tok, bare[i]['input_ids']) == raw[i]['instruction']
    batch = DataCollatorForPromptDataset(tok)([ds[i] for i in range(16)])
    lens = [len(ds[i]['input_ids']) for i in range(16)]
    L = max(lens)
    assert batch['input_ids'].shape == (16, L)
    for i, n in enumerate(lens):                                      # left padding for generation
        assert batch['attention_mask'][i].tolist() == [0] * (L - n) + [1] * n
        assert (batch['input_ids'][i, :L - n] == tok.pad_token_id).all()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert len(PromptDataset(str(path), tok, max_datasets_size=25)) == 25


def test_instructionwild_generate_prompt_dataset(real, tok, tmp_path):
    path = real/'instructionwild'/'seed_prompts_ch.jsonl'
    originals = {r['instruction'] for r in _jsonl(path)}
    rows_csv = generate_prompt_dataset(str(path), tmp_path/'p.csv', 40, seed=3)
    rows_json = generate_prompt_dataset(str(path), tmp_path/'p.json', 40, seed=3)
    assert rows_csv == rows_json and len({r['instruction'] for r in rows_csv}) == 40
    assert {r['instruction'] for r in rows_csv} <= originals
    assert [r['id'] for r in json.loads((tmp_path/'p.json').read_text(encoding='utf-8'))] == list(range(40))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        a = PromptDataset(str(tmp_path/'p.csv'), tok, max_length=2048)
        b = PromptDataset(str(tmp_path/'p.json'), tok, max_length=2048)
    assert len(a) == len(b) == 40
    for i in range(40): assert torch.equal(a[i]['input_ids'], b[i]['input_ids'])


# ---- Alpaca seed tasks ----

def test_alpaca_seed_tasks_supervised(real, tok):
    path = real/'alpaca'/'seed_tasks.jsonl'
    tasks = _jsonl(path)
    assert len(tasks) == 175
    flat = [(t['instruction'], x['input'], x['output']) for t in tasks for x in t['instances']]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = SupervisedDataset(str(path), tok, max_length=16384, skip_bad=True)
    assert ds.skipped == 0 and ds.truncated_away == 0 and len(ds) == len(flat)
    with_input = next(k for k, f in enumerate(flat) if f[1])
    without_input = next(k for k, f in enumerate(flat) if not f[1])
    for k in (with_input, without_input, len(flat) - 1):
        s, (ins, inp, out) = ds[k], flat[k]
        prompt = s['labels'] == IGNORE_INDEX
        assert _dec(tok, s['input_ids'][prompt]) == format_prompt(ins, inp)
        assert _dec(tok, s['labels'][~prompt][:-1]) == out
        assert s['labels'][-1].item() == tok.eos_token_id
    batch = DataCollatorForSupervisedDataset(tok)([ds[i] for i in range(6)])
    for i in range(6):
        n = len(ds[i]['input_ids'])
        assert batch['attention_mask'][i].sum().item() == n
        assert (batch['labels'][i, n:] == IGNORE_INDEX).all()


def test_alpaca_seed_tasks_short_max_length_is_reported(real, tok):
    path = real/'alpaca'/'seed_tasks.jsonl'
    flat = [(t['instruction'], x['input']) for t in _jsonl(path) for x in t['instances']]
    prompt_lens = sorted(len(tok(format_prompt(i, x))['input_ids']) for i, x in flat)
    L = prompt_lens[len(prompt_lens) // 2] + 1          # about half of the prompts leave no room for a response
    too_long = sum(n >= L for n in prompt_lens)
    with pytest.raises(ValueError, match=r'seed_tasks\.jsonl, row \d+, instance \d+ \(0-based\): the prompt'):
        SupervisedDataset(str(path), tok, max_length=L)
    with pytest.warns(UserWarning, match=f'dropped {too_long} samples whose response did not fit max_length={L}'):
        ds = SupervisedDataset(str(path), tok, max_length=L, skip_bad=True)
    assert ds.truncated_away == too_long and len(ds) == len(flat) - too_long
    for s in ds: assert (s['labels'] != IGNORE_INDEX).any()         # never a sample with nothing to learn
