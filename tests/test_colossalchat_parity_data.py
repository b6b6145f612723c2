"""Parity of the datasets, collators and replay buffer with ColossalChat's own code (commit d4fb7bf).

The oracle is imported, never copied: `coati.dataset` (sft_dataset.py, reward_dataset.py, prompt_dataset.py) and
`coati.replay_buffer` (utils.py, naive.py) of ../shared/reference/colossalchat-2023-06. Both run on the same rows with
the same tokenizer (the project's bundled one, `coati_nb.tokenizer.load_tokenizer`; a copy whose pad is its EOS, as
ColossalChat's scripts set for GPT-2/OPT/BLOOM; a copy that pads on the left) and must give the same integer tensors, exactly. Ours runs with
its faithful flags: `SFTDataset(faithful=True)`, `SupervisedDataset(faithful=True)`,
`DataCollatorForSupervisedDataset(faithful_mask=True)`, `RmStaticDataset` / `HhRlhfDataset(faithful_truncation=True)`,
`PromptDataset(faithful=True)`. Where ours departs on purpose the test shows the measured difference and why:

* samples ColossalChat keeps silently although they teach nothing (the response cut away, chosen == rejected after
  the cut) are reported by ours, an error or, with skip_bad=True, a counted drop; on the rows ours keeps, the tensors
  are equal;
* the replay buffer: ColossalChat stacks `sequences` unpadded (items of different lengths cannot share a batch) and
  left-pads the action tensors; ours drops each item's padding and re-pads (sequences on the left to the longest
  prompt and on the right to the longest response, action tensors on the right). On one batch both give the same
  tensors up to the columns that are padding in every row (ours drops them); each layout keeps every action aligned
  with its token (actions are the last A columns of the sequences in both) — so each padding side is right for its
  own layout, and mixing them would misalign.

Real rows come from ../shared/data (COATI_NB_REALDATA, as in tests/test_realdata.py); they are read, never copied
into the repository. ColossalChat's SupervisedDataset and PromptDataset read a JSON list file, which is written to
pytest's tmp_path.
"""
import contextlib, gzip, io, json, random, sys, warnings
from pathlib import Path
from unittest import mock

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import import_coati, HOW_TO_GET, quiet

coati = import_coati()
if coati is None: pytest.skip(HOW_TO_GET, allow_module_level=True)

import coati.dataset as ccd                                               # noqa: E402  ColossalChat's datasets
from coati.dataset.sft_dataset import PROMPT_DICT                         # noqa: E402
from coati.experience_maker.base import Experience as CCExperience        # noqa: E402
from coati.models.generation import generate_with_actor                   # noqa: E402
from coati.replay_buffer import NaiveReplayBuffer as CCBuffer             # noqa: E402
from coati.replay_buffer.utils import make_experience_batch as cc_make     # noqa: E402
from coati.replay_buffer.utils import split_experience_batch as cc_split  # noqa: E402

from coati_nb.dataset import (IGNORE_INDEX, DataCollatorForSupervisedDataset, HhRlhfDataset, PromptDataset,  # noqa: E402
                              RmStaticDataset, SFTDataset, SupervisedDataset, split_hh_dialogue)
from coati_nb.experience_maker import Experience                          # noqa: E402
from coati_nb.replay_buffer import NaiveReplayBuffer, make_experience_batch, split_experience_batch  # noqa: E402
from coati_nb.tokenizer import load_tokenizer                             # noqa: E402
from coati_nb.toy_task import format_prompt                               # noqa: E402

RM_KEYS = ('chosen_ids', 'c_mask', 'reject_ids', 'r_mask')


@pytest.fixture(scope='module', params=['pad', 'pad=eos', 'left'])
def tok(request):
    "The bundled tokenizer; a copy whose pad token is its EOS (ColossalChat's scripts do that); one that pads on the left."
    t = load_tokenizer()
    if request.param == 'pad=eos': t.pad_token = t.eos_token
    if request.param == 'left': t.padding_side = 'left'              # faithful modes follow the tokenizer's sides, as ColossalChat
    return t




def same(ours: dict, theirs: dict, where=''):
    "Every tensor ColossalChat returns equals ours, as integers."
    for k, v in theirs.items():
        assert ours[k].tolist() == torch.as_tensor(v).long().tolist(), f"{where}: {k} differs"


def json_list(tmp_path, rows, name='rows.json') -> str:
    p = tmp_path/name
    p.write_text(json.dumps(rows, ensure_ascii=False), encoding='utf-8')
    return str(p)


def on_cpu():
    "ColossalChat's PromptDataset and NaiveReplayBuffer ask torch.cuda for the current device; answer the CPU."
    return mock.patch('torch.cuda.current_device', return_value='cpu')


SELF_INSTRUCT = [{'prompt': 'Translate to Chinese: cat\nOutput:', 'completion': ' 猫<|endoftext|>'},
                 {'prompt': 'Add 2 and 3.\nOutput:', 'completion': ' 5<|endoftext|>'},
                 {'prompt': '把 "dog" 翻译成英文。\n输出：', 'completion': ' dog'},
                 {'prompt': 'Tell me a long story about a cat and a dog.\nOutput:', 'completion': ' Once upon a time there was a cat.'}]
ALPACA = [{'instruction': 'Add the numbers', 'input': '2 3', 'output': '5'},
          {'instruction': '把 "cat" 翻译成中文', 'input': '', 'output': '猫'},
          {'id': 7, 'instruction': 'Name a colour', 'output': 'blue'},
          {'instruction': 'Smile', 'input': ' ', 'output': ':) ...'},          # a blank input still selects prompt_input
          {'instruction': 'Write a long poem about the sea and the sky, please.', 'input': '', 'output': 'The sea ' * 30}]
RM_STATIC = [{'prompt': '\n\nHuman: What is 2+3?\n\nAssistant:', 'chosen': ' 5.', 'rejected': ' 6.'},
             {'prompt': '\n\nHuman: 猫的英文是什么？\n\nAssistant:', 'chosen': ' cat', 'rejected': ' 狗'},
             {'prompt': '\n\nHuman: Tell me a story.\n\nAssistant:', 'chosen': ' Once upon a time, a cat met a dog.', 'rejected': ' No.'}]
HH = '\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+3?\n\nAssistant:'
HH_ROWS = [{'chosen': HH + ' 5.', 'rejected': HH + ' 6.'},
           {'chosen': '\n\nHuman: 你好\n\nAssistant: 你好！', 'rejected': '\n\nHuman: 你好\n\nAssistant: 走开。'},
           {'chosen': '\n\nHuman: ' + 'tell me a story. ' * 20 + '\n\nAssistant: Once upon a time.',
            'rejected': '\n\nHuman: ' + 'tell me a story. ' * 20 + '\n\nAssistant: No.'}]


# ---- the template and the end token ----

def test_template_and_end_token(tok):
    "ColossalChat's PROMPT_DICT (sft_dataset.py lines 26-34) is our format_prompt; its eos_token text becomes the EOS id."
    for row in ALPACA:
        cc = (PROMPT_DICT['prompt_input'] if row.get('input', '') != '' else PROMPT_DICT['prompt_no_input']).format_map(row)
        assert cc == format_prompt(row['instruction'], row.get('input', ''))
    assert tok(tok.eos_token, add_special_tokens=False)['input_ids'] == [tok.eos_token_id]


# ---- SFT ----

@pytest.mark.parametrize('max_length', [36, 48, 128])
def test_sft_dataset(tok, max_length):
    "SFTDataset (sft_dataset.py lines 55-72): prompt + completion + eos text, padded to max_length, labels = input_ids."
    with quiet():
        cc = ccd.SFTDataset(SELF_INSTRUCT, tok, max_length)
        ours = SFTDataset(SELF_INSTRUCT, tok, max_length, faithful=True)
    assert len(ours) == len(cc) == len(SELF_INSTRUCT)
    for i in range(len(cc)): same(ours[i], cc[i], f'row {i}')
    if max_length == 36: assert ours.truncated == 1               # the long completion is cut


def test_sft_dataset_departures(tok):
    "A sample whose response is cut away: ColossalChat keeps it (all prompt + padding); ours raises, or drops and counts."
    rows = SELF_INSTRUCT[3:]
    n_prompt = len(tok(rows[0]['prompt'])['input_ids'])
    with quiet(): cc = ccd.SFTDataset(rows, tok, n_prompt)
    assert len(cc) == 1 and cc[0]['input_ids'].tolist() == tok(rows[0]['prompt'])['input_ids']   # only the prompt
    with pytest.raises(ValueError, match=r'row 0 \(0-based\): the prompt'): SFTDataset(rows, tok, n_prompt, faithful=True)
    with quiet(): d = SFTDataset(SELF_INSTRUCT, tok, n_prompt, faithful=True, skip_bad=True)
    assert d.truncated_away == 1
    # the default path: separately tokenized, EOS as an id, the literal marker stripped, no padding trained
    with quiet(): default = SFTDataset(SELF_INSTRUCT, tok, 128)
    with quiet(): cc = ccd.SFTDataset(SELF_INSTRUCT, tok, 128)
    pad_labels = sum(int((cc[i]['labels'] == tok.pad_token_id).sum()) for i in range(len(cc)))
    assert pad_labels > 300                                           # ColossalChat trains on padding
    assert all((default[i]['labels'] != IGNORE_INDEX).sum() < 20 for i in range(len(default)))


@pytest.mark.parametrize('max_length,size', [(128, None), (96, 3), (512, None)])
def test_supervised_dataset_and_collator(tok, tmp_path, max_length, size):
    "SupervisedDataset (sft_dataset.py lines 78-145) and its collator (lines 148-167)."
    path = json_list(tmp_path, ALPACA)
    with quiet():
        cc = ccd.SupervisedDataset(path, tok, max_datasets_size=size, max_length=max_length)
        ours = SupervisedDataset(path, tok, max_datasets_size=size, max_length=max_length, faithful=True)
    assert len(ours) == len(cc) == len(ALPACA[:size])
    for i in range(len(cc)): same(ours[i], cc[i], f'row {i}')
    assert len({len(ours[i]['input_ids']) for i in range(len(ours))}) == 1   # padded to the dataset's longest row
    for batch in ([0, 1], [2, 1, 0], list(range(len(cc)))):
        same(DataCollatorForSupervisedDataset(tok, faithful_mask=True)([ours[i] for i in batch]),
             ccd.DataCollatorForSupervisedDataset(tok)([cc[i] for i in batch]), f'batch {batch}')


def test_supervised_dataset_departures(tok, tmp_path):
    "Prompt longer than max_length: ColossalChat keeps a sample with every label -100; ours reports it. Padding trained."
    path = json_list(tmp_path, ALPACA)
    with quiet():
        cc = ccd.SupervisedDataset(path, tok, max_length=48)
        ours = SupervisedDataset(path, tok, max_length=48, faithful=True, skip_bad=True)
    dead = [i for i in range(len(cc)) if (cc[i]['labels'] == IGNORE_INDEX).all()]
    assert dead and ours.truncated_away == len(dead) and len(ours) == len(cc) - len(dead)
    kept = [i for i in range(len(cc)) if i not in dead]
    for j, i in enumerate(kept): same(ours[j], cc[i], f'row {i}')      # the rows both keep are equal
    with pytest.raises(ValueError, match=rf'row {dead[0]} \(0-based\): the prompt'):
        SupervisedDataset(path, tok, max_length=48, faithful=True)
    with quiet():
        cc = ccd.SupervisedDataset(path, tok, max_length=512)
        default = SupervisedDataset(path, tok, max_length=512)
    # ColossalChat: padding to the longest row keeps the pad id as the label; ours never labels padding
    if tok.pad_token_id != tok.eos_token_id:
        assert sum(int((cc[i]['labels'] == tok.pad_token_id).sum()) for i in range(len(cc))) > 0
        assert sum(int((default[i]['labels'] == tok.pad_token_id).sum()) for i in range(len(default))) == 0
    n_src = [int((default[i]['labels'] == IGNORE_INDEX).sum()) for i in range(len(default))]   # our prompt lengths
    if tok.padding_side == 'right':
        # the prompt boundary: ours tokenizes prompt and response apart; on these rows ColossalChat masks the same count
        assert n_src == [int((cc[i]['labels'] == IGNORE_INDEX).sum()) for i in range(len(cc))]
    else:
        # left padding: ColossalChat's `label[:source_len] = -100` lands on the padding and the prompt's start, so the
        # prompt's last min(n_pad, n_src) tokens are trained on (measured here; `faithful=True` reproduces it)
        trained = []
        for i in range(len(cc)):
            n_pad = int((cc[i]['input_ids'] == tok.pad_token_id).sum())
            lab = cc[i]['labels'][n_pad:n_pad + n_src[i]]
            assert int((lab != IGNORE_INDEX).sum()) == min(n_pad, n_src[i])
            trained.append(min(n_pad, n_src[i]))
        assert sum(trained) > 0


# ---- reward-model pairs ----

def _rm_sample(cc_item) -> dict:
    "ColossalChat returns (chosen_ids, c_mask, reject_ids, r_mask), each (1, max_length)."
    return dict(zip(RM_KEYS, (t[0] for t in cc_item)))


def _unusable(tok, prompts, cc, max_length):
    "Indices of ColossalChat samples with no response token left (or chosen == rejected): the pairs ours reports."
    bad = []
    for i, p in enumerate(prompts):
        s = _rm_sample(cc[i])
        n_p = len(tok(p, max_length=max_length, truncation=True)['input_ids'])
        if min(int(s['c_mask'].sum()), int(s['r_mask'].sum())) <= n_p or torch.equal(s['chosen_ids'], s['reject_ids']): bad.append(i)
    return bad


def _compare_pairs(tok, cls, rows, prompts, max_length, special_token=None):
    with quiet():
        cc = getattr(ccd, cls.__name__)(rows, tok, max_length, special_token)
        ours = cls(rows, tok, max_length, special_token, skip_bad=True, faithful_truncation=True)
    bad = _unusable(tok, prompts, cc, max_length)
    kept = [i for i in range(len(cc)) if i not in bad]
    assert ours.truncated_away == len(bad) and len(ours) == len(kept)
    for j, i in enumerate(kept): same(ours[j], _rm_sample(cc[i]), f'row {i}')
    return cc, ours, bad


@pytest.mark.parametrize('max_length', [26, 32, 64])
@pytest.mark.parametrize('special_token', [None, ' THE END'])
def test_rm_static_dataset(tok, max_length, special_token):
    "RmStaticDataset (reward_dataset.py lines 21-60)."
    _, ours, bad = _compare_pairs(tok, RmStaticDataset, RM_STATIC, [r['prompt'] for r in RM_STATIC], max_length, special_token)
    if special_token is None: assert bad == {26: [2], 32: [], 64: []}[max_length]   # row 2's prompt alone fills 26


@pytest.mark.parametrize('max_length', [24, 48, 512])
def test_hh_rlhf_dataset(tok, max_length):
    "HhRlhfDataset (reward_dataset.py lines 63-112): the whole dialogue + end text."
    cc, ours, bad = _compare_pairs(tok, HhRlhfDataset, HH_ROWS, [split_hh_dialogue(r['chosen'])[0] for r in HH_ROWS], max_length)
    assert bad == {24: [0, 2], 48: [2], 512: []}[max_length]         # row 2: a long dialogue; row 0's prompt fills 24


def test_rm_default_truncation_differs(tok):
    "The default path: both responses whole under one prompt window; ColossalChat's right cut makes them identical."
    with quiet(): cc = ccd.HhRlhfDataset(HH_ROWS[2:], tok, 32)
    s = _rm_sample(cc[0])
    assert torch.equal(s['chosen_ids'], s['reject_ids'])              # ColossalChat: log 2 loss, zero gradient
    ours = HhRlhfDataset(HH_ROWS[2:], tok, 32)[0]
    n_c, n_r = (len(tok(split_hh_dialogue(HH_ROWS[2][k])[1], add_special_tokens=False)['input_ids']) for k in ('chosen', 'rejected'))
    assert torch.equal(ours['chosen_ids'][:-n_c - 1], ours['reject_ids'][:-n_r - 1])
    assert len(ours['chosen_ids']) == 32 and ours['chosen_ids'][-1] == tok.eos_token_id


# ---- PPO prompts ----

@pytest.mark.parametrize('max_length,size', [(8, None), (24, 2), (96, None)])
def test_prompt_dataset(tok, tmp_path, max_length, size):
    "PromptDataset (prompt_dataset.py lines 14-46): bare instruction, cut and padded to max_length by the tokenizer."
    rows = [{'instruction': r['instruction'], 'input': r.get('input', '')} for r in ALPACA]
    path = json_list(tmp_path, rows)
    with on_cpu(), quiet(): cc = ccd.PromptDataset(path, tok, max_datasets_size=size, max_length=max_length)
    with quiet(): ours = PromptDataset(path, tok, max_datasets_size=size, max_length=max_length, faithful=True)
    assert len(ours) == len(cc) == len(rows[:size])
    for i in range(len(cc)): same(ours[i], cc[i], f'row {i}')


# ---- real rows ----

def test_real_hh_rlhf(real, tok):
    "hh-rlhf harmless-base, the first 300 rows, at two max_lengths."
    rows = [json.loads(l) for l in gzip.open(real/'hh-rlhf-harmless-base'/'test.jsonl.gz', 'rt', encoding='utf-8')][:300]
    def usable(r):
        (pc, c), (pr, j) = split_hh_dialogue(r['chosen']), split_hh_dialogue(r['rejected'])
        return pc == pr and c.strip() and j.strip() and c != j
    rows = [r for r in rows if usable(r)]                             # the rows ours calls bad are outside the comparison
    prompts = [split_hh_dialogue(r['chosen'])[0] for r in rows]
    for L in (128, 512):
        _, ours, bad = _compare_pairs(tok, HhRlhfDataset, rows, prompts, L)
        assert len(ours) > 0 and (L == 512 or len(bad) > 0)


def test_real_instructionwild_prompts(real, tok, tmp_path):
    for lang in ('en', 'ch'):
        rows = [json.loads(l) for l in (real/'instructionwild'/f'seed_prompts_{lang}.jsonl').read_text(encoding='utf-8').splitlines() if l.strip()]
        path = json_list(tmp_path, rows, f'{lang}.json')
        with on_cpu(), quiet(): cc = ccd.PromptDataset(path, tok)
        with quiet(): ours = PromptDataset(path, tok, faithful=True)
        assert len(cc) == len(ours) == 429
        for i in range(len(cc)): same(ours[i], cc[i], f'{lang} row {i}')


def test_real_alpaca_seed_tasks(real, tok, tmp_path):
    tasks = [json.loads(l) for l in (real/'alpaca'/'seed_tasks.jsonl').read_text(encoding='utf-8').splitlines() if l.strip()]
    flat = [{'instruction': t['instruction'], 'input': x['input'], 'output': x['output']} for t in tasks for x in t['instances']]
    path = json_list(tmp_path, flat)
    with quiet():
        cc = ccd.SupervisedDataset(path, tok, max_length=1024)
        ours = SupervisedDataset(path, tok, max_length=1024, faithful=True, skip_bad=True)
        default = SupervisedDataset(path, tok, max_length=1024, skip_bad=True)
    dead = [i for i in range(len(cc)) if (cc[i]['labels'] == IGNORE_INDEX).all()]
    assert ours.truncated_away == len(dead) and len(ours) == len(cc) - len(dead)
    kept = [i for i in range(len(cc)) if i not in dead]
    for j, i in enumerate(kept): same(ours[j], cc[i], f'row {i}')
    # measured: the prompt boundary of the default path (prompt and response tokenized apart) against ColossalChat's
    # (whole text tokenized, the prompt's own token count masked); with this tokenizer no seed task differs
    if default.truncated_away == 0 and len(dead) == 0:
        off = sum(int((default[i]['labels'] == IGNORE_INDEX).sum()) != int((cc[i]['labels'] == IGNORE_INDEX).sum()) for i in range(len(cc)))
        assert off == 0


# ---- replay buffer ----

class _Bigram(torch.nn.Module):
    "A bigram language model shaped like ColossalChat's generate() expects: model(input_ids) -> {'logits'}."
    def __init__(self, seed=0, eos_bias=0.0):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(12, 12, generator=torch.Generator().manual_seed(seed)) + eos_bias * (torch.arange(12) == 2))

    def forward(self, input_ids, attention_mask=None, **kw): return {'logits': self.table[input_ids]}


def cc_experience(prompts, max_length, seed, early_stopping=False):
    "A ColossalChat Experience: its generate_with_actor makes sequences, attention and action masks (pad 0, EOS 2)."
    torch.manual_seed(seed)
    seq, am, act = generate_with_actor(_Bigram(), prompts, max_length=max_length, eos_token_id=2, pad_token_id=0,
                                       early_stopping=early_stopping)
    B, A = act.shape
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, A, generator=g) * act                            # (B, A), 0 off the mask
    v, r = torch.randn(B, generator=g), torch.randn(B, generator=g)
    return CCExperience(seq, lp, v, r, (r - v).unsqueeze(-1), am, act)   # advantages (B, 1), as naive.py line 29 makes


def ours_of(e) -> Experience:
    "The same experience in our class: per-sequence advantages are (B,), not ColossalChat's (B, 1)."
    return Experience(e.sequences.clone(), e.action_log_probs.clone(), e.values.clone(), e.reward.clone(),
                      e.advantages.squeeze(-1).clone(), e.attention_mask.clone(), e.action_mask.clone())


def drop_common_padding(e):
    "ColossalChat's batch without the columns that are padding in every row (left: attention 0; right: both masks 0)."
    S, A = e.sequences.shape[1], e.action_mask.shape[1]
    am, act = e.attention_mask.bool(), e.action_mask.bool()
    lead = 0
    while lead < S - A and not am[:, lead].any(): lead += 1
    trail = 0
    while trail < A - 1 and not am[:, S - 1 - trail].any() and not act[:, A - 1 - trail].any(): trail += 1
    return dict(sequences=e.sequences[:, lead:S - trail], attention_mask=e.attention_mask[:, lead:S - trail],
                action_log_probs=e.action_log_probs[:, :A - trail], action_mask=e.action_mask[:, :A - trail],
                values=e.values, reward=e.reward, advantages=e.advantages.squeeze(-1))


def assert_batch_equal(ours: Experience, theirs):
    for k, v in drop_common_padding(theirs).items():
        assert getattr(ours, k).shape == v.shape, k
        assert torch.equal(getattr(ours, k).to(v.dtype), v), k


PROMPTS_A = torch.tensor([[0, 0, 5], [6, 7, 8], [0, 4, 4], [0, 0, 9]])   # left-padded prompts, as our collator makes


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_split_make_round_trip(seed):
    "split_experience_batch / make_experience_batch (utils.py lines 33-73) on one batch: the same tensors."
    e = cc_experience(PROMPTS_A, 10, seed)
    theirs = cc_make(cc_split(e))
    for k in ('sequences', 'action_log_probs', 'values', 'reward', 'advantages', 'attention_mask', 'action_mask'):
        assert torch.equal(getattr(theirs, k), getattr(e, k)), k         # ColossalChat's round trip is the identity
    ours = make_experience_batch(split_experience_batch(ours_of(e)))
    assert_batch_equal(ours, e)


def test_naive_replay_buffer_append_sample():
    "NaiveReplayBuffer (naive.py): limit keeps the newest; the same random seed samples the same items."
    batches = [cc_experience(PROMPTS_A, 10, s) for s in range(3)]
    with mock.patch('torch.cuda.current_device', return_value=0): cc = CCBuffer(sample_batch_size=3, limit=10)          # cpu_offload=True, ColossalChat's default
    cc.target_device = torch.device('cpu')                               # it would move samples to the GPU
    ours = NaiveReplayBuffer(3, limit=10, target_device='cpu')
    for e in batches:
        cc.append(e); ours.append(ours_of(e))
    assert len(cc) == len(ours) == 10
    for a, b in zip(cc.items, ours.items):                              # the same newest items, in order
        n = b.sequences.numel()
        assert torch.equal(a.sequences[a.attention_mask.bool()], b.sequences[b.attention_mask.bool()])
        assert torch.equal(a.action_log_probs[:b.num_actions], b.action_log_probs)
        assert a.values == b.values and a.advantages.item() == b.advantages.item() and n <= a.sequences.numel()
    for seed in range(5):
        random.seed(seed); x = cc.sample()
        random.seed(seed); y = ours.sample()
        assert_batch_equal(y, x)
    loader = lambda buf: list(torch.utils.data.DataLoader(buf, batch_size=4, shuffle=True, collate_fn=buf.collate_fn,
                                                          generator=torch.Generator().manual_seed(0)))
    for x, y in zip(loader(cc), loader(ours)): assert_batch_equal(y, x)


def test_replay_buffer_different_lengths():
    "Batches of different lengths (early stopping): ColossalChat's torch.stack fails; ours batches them."
    e1 = cc_experience(PROMPTS_A, 12, 0, early_stopping=True)
    e2 = cc_experience(PROMPTS_A, 12, 3, early_stopping=True)
    assert e1.sequences.shape != e2.sequences.shape
    with pytest.raises(RuntimeError, match='stack expects each tensor to be equal size'):
        cc_make(cc_split(e1)[:2] + cc_split(e2)[:2])
    mixed = make_experience_batch(split_experience_batch(ours_of(e1))[:2] + split_experience_batch(ours_of(e2))[:2])
    assert mixed.batch_size == 4


def test_action_padding_side_keeps_alignment():
    """Equal S, different A (prompts of different lengths): ColossalChat left-pads the action tensors, ours right-pads
    them and re-pads the sequences. In both, action column j belongs to sequence column S - A + j; mixing the two
    layouts would misalign."""
    e1 = cc_experience(PROMPTS_A, 10, 0)                                 # prompt 3, A = 7
    e2 = cc_experience(torch.tensor([[0, 0, 5, 6, 7], [1, 4, 4, 3, 9]]), 10, 1)   # prompt 5, A = 5
    assert e1.sequences.shape[1] == e2.sequences.shape[1] and e1.action_mask.shape[1] != e2.action_mask.shape[1]
    items = cc_split(e1)[:2] + cc_split(e2)
    theirs = cc_make(items)                                             # stacks: S equal; actions left-padded to 7
    ours = make_experience_batch(split_experience_batch(ours_of(e1))[:2] + split_experience_batch(ours_of(e2)))
    for b in (theirs, ours):
        S, A = b.sequences.shape[1], b.action_mask.shape[1]
        for i, it in enumerate(items):
            acted = b.sequences[i, S - A:][b.action_mask[i]]            # the tokens each layout says were acted
            assert torch.equal(acted, it.sequences[-it.action_mask.numel():][it.action_mask]), i
            assert torch.equal(b.action_log_probs[i][b.action_mask[i]], it.action_log_probs[it.action_mask]), i
    # the other side would be wrong: right-padding in ColossalChat's layout, left-padding in ours, misalign the short rows
    short = [i for i, it in enumerate(items) if it.action_mask.numel() < theirs.action_mask.shape[1]]
    assert short == [2, 3]
    def misaligned(seqs, masks):
        S, A = seqs.shape[1], masks.shape[1]
        return [i for i, it in enumerate(items)
                if not torch.equal(seqs[i, S - A:][masks[i]], it.sequences[-it.action_mask.numel():][it.action_mask])]
    right = torch.stack([torch.nn.functional.pad(it.action_mask, (0, theirs.action_mask.shape[1] - it.action_mask.numel())) for it in items])
    assert misaligned(theirs.sequences, right) == short
    ours_items = split_experience_batch(ours)
    A = ours.action_mask.shape[1]
    left = torch.stack([torch.nn.functional.pad(it.action_mask, (A - it.num_actions, 0)) for it in ours_items])
    assert misaligned(ours.sequences, left) != [] and misaligned(ours.sequences, ours.action_mask) == []
