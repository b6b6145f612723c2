"""The data loaders of coati_nb.dataset on bad files: nothing breaks, nothing is lost, nothing gets in (issue 11).

Each test writes its own small bad file to pytest's tmp_path. A bad line is a clear `ValueError` naming the file and
the line (and, for JSON, the column and the parser's message); with skip_bad=True it is skipped, counted and named in
the warning. The Hugging Face Hub is used only when asked ('hub:NAME' or hub=True); the tests never touch the network
(the hub call is replaced by a recorder). The two hh-rlhf rows of ../shared/data whose dialogues part before the
last turn are read in place (COATI_NB_REALDATA, as in tests/test_realdata.py), never copied. The fuzz tests are
bounded by example counts, not by time.
"""
import contextlib, gzip, io, json, os, sys, warnings
from pathlib import Path

os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from coati_nb.dataset import (DataFileError, HhRlhfDataset, PromptDataset, RmStaticDataset, SFTDataset,
                              SupervisedDataset, read_rows, split_hh_pair)
from coati_nb.tokenizer import load_tokenizer
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import quiet  # noqa: E402


@pytest.fixture(scope='module')
def tok():
    return load_tokenizer()




def write(path: Path, data: bytes) -> Path:
    if path.name.endswith('.gz'): data = gzip.compress(data)
    path.write_bytes(data); return path


GOOD = [{'prompt': 'Add 2 and 3.\nOutput:', 'completion': ' 5'}, {'prompt': 'Name a colour.\nOutput:', 'completion': ' blue'}]
GOOD_LINES = [json.dumps(r).encode() for r in GOOD]


# ---- 1. a JSON lines line that is not valid JSON ----

def test_invalid_escape_names_file_line_and_column(tmp_path):
    p = write(tmp_path/'scraped.jsonl', b'\n'.join([GOOD_LINES[0], rb'{"prompt": "C:\q", "completion": "x"}', GOOD_LINES[1]]) + b'\n')
    with pytest.raises(DataFileError, match=r"scraped\.jsonl, line 2 \(1-based\): invalid JSON: Invalid \\escape \(column 15\)") as e:
        read_rows(p)
    assert isinstance(e.value, ValueError)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable rows at line 2; first: .*scraped\.jsonl, line 2"):
        assert read_rows(p, skip_bad=True) == GOOD


def test_bad_lines_are_skipped_counted_and_named_by_the_datasets(tmp_path, tok):
    lines = [GOOD_LINES[0], rb'{"prompt": "C:\q"}', b'', GOOD_LINES[1], b'[1, 2]', b'\xff\xfe{"prompt": 1}', b'{"prompt": "a", "compl']
    p = write(tmp_path/'mixed.jsonl', b'\n'.join(lines))           # the last line is cut short (no newline)
    with pytest.raises(ValueError, match=r'mixed\.jsonl, line 2 \(1-based\)'): SFTDataset(str(p), tok)
    with pytest.warns(UserWarning, match=r"skipped 4 bad rows \(at line 2, line 5, line 6, line 7; first: "):
        ds = SFTDataset(str(p), tok, skip_bad=True)
    assert len(ds) == 2 and ds.skipped == 4 and len(ds.bad_rows) == 4
    assert 'expected a JSON object, got list' in ds.bad_rows[1]
    assert 'invalid UTF-8 at byte 1' in ds.bad_rows[2]
    assert 'is the file cut short?' in ds.bad_rows[3]


def test_truncated_last_line(tmp_path, tok):
    p = write(tmp_path/'cut.jsonl', b'\n'.join(GOOD_LINES) + b'\n' + GOOD_LINES[0][:15])
    with pytest.raises(DataFileError, match=r'cut\.jsonl, line 3 \(1-based\): invalid JSON: .* column \d+ .*cut short'):
        read_rows(p)
    with pytest.warns(UserWarning, match='skipped 1 bad rows'):
        assert len(SFTDataset(str(p), tok, skip_bad=True)) == 2


def test_rows_keep_their_file_numbers_after_a_skipped_line(tmp_path, tok):
    "A skipped line does not renumber the rows after it: the third line is still 'row 2'."
    p = write(tmp_path/'n.jsonl', b'\n'.join([GOOD_LINES[0], b'{oops', json.dumps({'prompt': 'x'}).encode()]))
    with pytest.warns(UserWarning, match=r'skipped 2 bad rows \(at line 2, row 2; first: '):
        ds = SFTDataset(str(p), tok, skip_bad=True)
    assert len(ds) == 1 and "n.jsonl, row 2 (0-based): field 'completion' is missing" in ds.bad_rows[1]


def test_broken_json_list_names_line_and_column(tmp_path):
    p = write(tmp_path/'list.json', b'[\n  {"instruction": "a"},\n  {"instruction": "b" "c"}\n]')
    with pytest.raises(DataFileError, match=r"list\.json, line 3 \(1-based\): invalid JSON list: Expecting ',' delimiter \(column 23\)"):
        read_rows(p, skip_bad=True)                                  # a broken list cannot be read in part


# ---- 2. invalid UTF-8 and broken gzip ----

@pytest.mark.parametrize('name', ['u.jsonl', 'u.jsonl.gz'])
def test_invalid_utf8_names_file_and_line(tmp_path, name):
    p = write(tmp_path/name, GOOD_LINES[0] + b'\n' + b'{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(DataFileError, match=rf"{name.replace('.', '[.]')}, line 2 \(1-based\): invalid UTF-8 at byte 16 of the line"):
        read_rows(p)
    with pytest.warns(UserWarning, match='at line 2'): assert read_rows(p, skip_bad=True) == GOOD[:1]


def test_invalid_utf8_in_csv_and_json_list(tmp_path):
    p = write(tmp_path/'p.csv', b'prompt,completion\na,b\nc\xff,d\n')
    with pytest.raises(DataFileError, match=r"p\.csv, line 3 \(1-based\): invalid UTF-8 \(byte b'\\xff'\)"): read_rows(p)
    with pytest.warns(UserWarning): assert read_rows(p, skip_bad=True) == [{'prompt': 'a', 'completion': 'b'}]
    q = write(tmp_path/'q.json', b'[{"a": "x"},\n {"a": "\xc3"}]')
    with pytest.raises(DataFileError, match=r"q\.json, line 2 \(1-based\): invalid UTF-8"): read_rows(q)


@pytest.mark.parametrize('name', ['d.jsonl.gz', 'd.csv.gz', 'd.json.gz'])
def test_broken_gzip_names_the_file(tmp_path, name):
    body = b'prompt,completion\n' + b'a,b\n' * 2000 if '.csv' in name else b'\n'.join(GOOD_LINES * 1000)
    cut = tmp_path/('cut_' + name); cut.write_bytes(gzip.compress(body)[:-40])          # a download stopped early
    with pytest.raises(DataFileError, match=rf"cut_{name.replace('.', '[.]')}: not a complete gzip file \(EOFError"):
        read_rows(cut, skip_bad=True)                                   # the lost tail cannot be counted: always an error
    fake = tmp_path/('fake_' + name); fake.write_bytes(body)            # not gzip at all
    with pytest.raises(DataFileError, match=rf"fake_{name.replace('.', '[.]')}: not a complete gzip file \(BadGzipFile"):
        read_rows(fake)
    bad = tmp_path/('bad_' + name); z = bytearray(gzip.compress(body)); z[len(z) // 2] ^= 0xFF; bad.write_bytes(bytes(z))
    with pytest.raises(DataFileError, match=rf"bad_{name.replace('.', '[.]')}: not a complete gzip file"):
        read_rows(bad)


# ---- 3. the hub only when asked ----

class _HubRecorder:
    def __init__(self): self.calls = []
    def __call__(self, name, **kw):
        self.calls.append((name, kw))
        rows = [{'prompt': '\n\nHuman: 2+3?\n\nAssistant:', 'chosen': ' 5.', 'rejected': ' 6.'}]
        return type('FakeDataset', (), {'to_list': lambda self: rows})()


@pytest.fixture
def hub(monkeypatch):
    import datasets
    rec = _HubRecorder()
    monkeypatch.setattr(datasets, 'load_dataset', rec)
    return rec


def test_bare_name_is_a_local_not_found(hub, tmp_path, monkeypatch, tok):
    monkeypatch.chdir(tmp_path)
    for name in ('Dahoas/rm-static', 'rm-static', 'data/train'):
        with pytest.raises(FileNotFoundError, match=rf"data file not found: {name} .*write 'hub:{name}' or pass hub=True"):
            read_rows(name)
    with pytest.raises(FileNotFoundError, match="'hub:Dahoas/rm-static'"): RmStaticDataset('Dahoas/rm-static', tok, 64)
    assert hub.calls == []                                               # no network call


def test_explicit_hub(hub, tok):
    rows = read_rows('hub:Dahoas/rm-static', split='test')
    assert hub.calls == [('Dahoas/rm-static', {'split': 'test', 'cache_dir': None})] and rows[0]['chosen'] == ' 5.'
    read_rows('Dahoas/rm-static', hub=True, cache_dir='/tmp/c')
    assert hub.calls[-1] == ('Dahoas/rm-static', {'split': 'train', 'cache_dir': '/tmp/c'})
    with quiet(): ds = RmStaticDataset('hub:Dahoas/rm-static', tok, 64)
    assert len(ds) == 1 and hub.calls[-1][0] == 'Dahoas/rm-static'


# ---- 4. ragged CSV rows, nulls ----

def test_ragged_csv_rows(tmp_path, tok):
    p = write(tmp_path/'r.csv', b'prompt,completion\n"a\nb",c\nd,e,f\ng\nh,i\n')  # a quoted cell spans lines 2-3
    with pytest.raises(DataFileError, match=r"r\.csv, line 4 \(1-based\): has 3 fields, header has 2"): read_rows(p)
    with pytest.warns(UserWarning, match=r'skipped 2 unreadable rows at line 4, line 5;'):
        assert read_rows(p, skip_bad=True) == [{'prompt': 'a\nb', 'completion': 'c'}, {'prompt': 'h', 'completion': 'i'}]
    with pytest.warns(UserWarning, match=r'skipped 2 bad rows \(at line 4, line 5;'):
        assert len(SFTDataset(str(p), tok, skip_bad=True)) == 2
    dup = write(tmp_path/'dup.csv', b'prompt,prompt\na,b\n')
    with pytest.raises(DataFileError, match=r"dup\.csv, line 1 \(1-based\): the header needs distinct"): read_rows(dup)


def test_null_fields_are_named_null(tmp_path, tok):
    import pandas as pd
    rows = [{'prompt': 'p', 'chosen': ' a', 'rejected': ' b'}, {'prompt': 'q', 'chosen': None, 'rejected': ' c'}]
    pd.DataFrame(rows).to_parquet(tmp_path/'rm.parquet')
    write(tmp_path/'rm.jsonl', b'\n'.join(json.dumps(r).encode() for r in rows))
    for name in ('rm.parquet', 'rm.jsonl'):
        with pytest.raises(ValueError, match=rf"rm\.{name.split('.')[1]}, row 1 \(0-based\): field 'chosen' is null"):
            RmStaticDataset(str(tmp_path/name), tok, 64)
    with pytest.raises(ValueError, match=r"row 0 \(0-based\): field 'instruction' is null"):
        PromptDataset([{'instruction': None}], tok)
    with pytest.raises(ValueError, match=r"field 'prompt' is missing"): RmStaticDataset([{'chosen': 'a', 'rejected': 'b'}], tok, 64)


def test_folder_splits(tmp_path):
    import pandas as pd
    (tmp_path/'data').mkdir()
    pd.DataFrame([{'x': 'a'}]).to_parquet(tmp_path/'data'/'train-00000-of-00001-abc.parquet')
    pd.DataFrame([{'x': 'b'}]).to_parquet(tmp_path/'data'/'test-00000-of-00001-def.parquet')
    assert read_rows(tmp_path) == [{'x': 'a'}] and read_rows(tmp_path, split='test') == [{'x': 'b'}]
    with pytest.raises(DataFileError, match=r"no data file for split 'validation' \(splits found: \['test', 'train'\]\)"):
        read_rows(tmp_path, split='validation')


# ---- 5. hh-rlhf dialogues that part before the last turn ----

FORK = '\n\nHuman: Hi\n\nAssistant:'


def test_hh_forked_dialogues_are_kept(tok):
    row = {'chosen': FORK + ' Hello!\n\nHuman: 2+3?\n\nAssistant: 5.', 'rejected': FORK + ' Go away.'}
    assert split_hh_pair(row['chosen'], row['rejected']) == (FORK, ' Hello!\n\nHuman: 2+3?\n\nAssistant: 5.', ' Go away.')
    s = HhRlhfDataset([row], tok, 128)[0]                                 # formerly: "different prompts", a bad row
    dec = lambda ids: tok.decode(ids[:-1], skip_special_tokens=True)
    assert (dec(s['chosen_ids']), dec(s['reject_ids'])) == (row['chosen'], row['rejected'])
    n_p = len(tok(FORK)['input_ids'])
    assert torch.equal(s['chosen_ids'][:n_p], s['reject_ids'][:n_p])     # one shared prompt
    with pytest.raises(ValueError, match='no shared prompt'):
        HhRlhfDataset([{'chosen': '\n\nHuman: A\n\nAssistant: x', 'rejected': '\n\nHuman: B\n\nAssistant: x'}], tok, 64)


def _real_forked_rows():
    from test_realdata import realdata_dir
    real = realdata_dir()
    if real is None: pytest.skip('real data folder not found (set COATI_NB_REALDATA); skipped outside CI')
    rows = read_rows(real/'hh-rlhf-harmless-base'/'test.jsonl.gz')
    return {i: rows[i] for i in (1254, 1688)}


def test_real_hh_forked_rows(tok):
    "Rows 1254 and 1688 of harmless-base/test: the dialogues part at an earlier turn; both are kept whole."
    rows = _real_forked_rows()
    for i, r in rows.items():
        prompt, c, j = split_hh_pair(r['chosen'], r['rejected'])
        k = r['chosen'].rindex('\n\nAssistant:')
        assert prompt and prompt != r['chosen'][:k + len('\n\nAssistant:')], i     # shorter than the last-turn prompt
        assert prompt.endswith('\n\nAssistant:') and r['rejected'].startswith(prompt)
    with quiet(): ds = HhRlhfDataset(list(rows.values()), tok, 4096)
    assert len(ds) == 2 and ds.skipped == 0
    for s, r in zip(ds, rows.values()):
        assert tok.decode(s['chosen_ids'][:-1], skip_special_tokens=True) == r['chosen']
        assert tok.decode(s['reject_ids'][:-1], skip_special_tokens=True) == r['rejected']


def test_real_hh_forked_rows_match_colossalchat(tok):
    "faithful_truncation=True gives ColossalChat's own tensors on the forked rows: it scores each whole dialogue too."
    rows = list(_real_forked_rows().values())
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _reference import import_coati, HOW_TO_GET
    if import_coati() is None: pytest.skip(HOW_TO_GET)
    import coati.dataset as ccd
    for L, kept in ((100, [0]), (512, [0, 1])):         # at 100 the second row's shared prompt (114 tokens) fills the window
        with quiet():
            cc = ccd.HhRlhfDataset(rows, tok, L)
            ours = HhRlhfDataset(rows, tok, L, faithful_truncation=True, skip_bad=True)
        assert len(ours) == len(kept) and ours.truncated_away == 2 - len(kept)
        for j, i in enumerate(kept):
            for k, v in zip(('chosen_ids', 'c_mask', 'reject_ids', 'r_mask'), cc[i]):
                assert ours[j][k].tolist() == v[0].tolist(), (L, i, k)


# ---- 6. fuzz: any bytes, any JSON lines ----

EXTS = ['.jsonl', '.json', '.jsonl.gz', '.csv', '.csv.gz', '.parquet']
TEXT = st.lists(st.characters(codec='utf-8') | st.sampled_from(['\n', '\\', '"', ',', '\x00', '\ud800', '<|endoftext|>',
                                                                 '\n\nAssistant:', '\n\nHuman:']), max_size=8).map(''.join)
FIELDS = ['prompt', 'completion', 'chosen', 'rejected', 'instruction', 'input', 'output', 'instances']
VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS) | TEXT, inner, max_size=3),
                     max_leaves=6)
ROW = st.dictionaries(st.sampled_from(FIELDS), VALUE | TEXT, max_size=5)


def _every_loader(path: Path, tok):
    "read_rows and each dataset class, strict and skipping: each either works or raises a clear ValueError naming the file."
    calls = [lambda s: read_rows(path, skip_bad=s), lambda s: SFTDataset(str(path), tok, 64, skip_bad=s),
             lambda s: SupervisedDataset(str(path), tok, max_length=64, skip_bad=s),
             lambda s: RmStaticDataset(str(path), tok, 64, skip_bad=s), lambda s: HhRlhfDataset(str(path), tok, 64, skip_bad=s),
             lambda s: PromptDataset(str(path), tok, max_length=64, skip_bad=s)]
    for call in calls:
        for skip in (False, True):
            try:
                with quiet(): call(skip)
            except ValueError as e:
                assert not isinstance(e, (UnicodeError, json.JSONDecodeError)), repr(e)
                assert type(e).__module__ in ('builtins', 'coati_nb.dataset'), repr(e)
                assert path.name in str(e), repr(e)


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), ext=st.sampled_from(EXTS))
def test_fuzz_any_bytes(tmp_path, tok, data, ext):
    _every_loader(write(tmp_path/f'fuzz{ext}', data), tok)


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW | VALUE, min_size=1, max_size=5), ext=st.sampled_from(['.jsonl', '.json', '.jsonl.gz']),
       as_list=st.booleans(), cut=st.integers(0, 3))
def test_fuzz_json_rows(tmp_path, tok, rows, ext, as_list, cut):
    body = json.dumps(rows).encode() if as_list else b'\n'.join(json.dumps(r).encode() for r in rows)
    _every_loader(write(tmp_path/f'fuzz{ext}', body[:len(body) - cut]), tok)
