"""Serving parity with ColossalChat's own inference server (reference commit d4fb7bf, `inference/`).

The prompt built from a history under a token budget must equal `ChatPromptProcessor.preprocess_prompt`
(inference/utils.py:127-173) on the reference's own cases (inference/tests/test_chat_prompt.py), run with our bundled
tokenizer through both; and `/generate` must accept exactly the requests of the reference's load test
(inference/locustfile.py), driven by its own `GenerationUser.generate` against our app in-process.
`inference/` is not a package under coati: its files are loaded from the reference folder by path.
"""
import copy, importlib.util, json, os, sys, types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import import_coati, reference_dir, HOW_TO_GET

if import_coati() is None: pytest.skip(HOW_TO_GET, allow_module_level=True)
INFERENCE = reference_dir() / 'inference'
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')   # the reference's pydantic-1 style Field(example=)

from coati_nb.inference import (COLOSSALCHAT_CONTEXT, ChatEngine, PromptTooLong, build_prompt, colossalchat_prompt,
                                render_chat, tiny_chat_model)
from coati_nb.serve import ServeConfig, create_app
from coati_nb.tokenizer import bundled_data_path, load_tokenizer


def _load(name: str, path: Path, modules: dict):
    "Import a reference file by path under a private name, with `modules` standing in for its imports meanwhile."
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        for k, v in saved.items():
            if v is None: sys.modules.pop(k, None)
            else: sys.modules[k] = v


def _jieba_or_stand_in():
    "utils.py imports jieba for its censored-word check only; with no censored words it is never called."
    try: import jieba
    except ImportError:
        jieba = types.ModuleType('jieba')
        def cut(*a, **k): raise RuntimeError("jieba is not installed: the censored-word check cannot run")
        jieba.cut = cut
    return jieba


@pytest.fixture(scope='module')
def cc_utils():
    return _load('colossalchat_inference_utils', INFERENCE / 'utils.py', {'jieba': _jieba_or_stand_in()})


@pytest.fixture(scope='module')
def cc_cases(cc_utils):
    "inference/tests/test_chat_prompt.py, its tokenizer pointed at our bundled one (it reads PRETRAINED_PATH)."
    old = os.environ.get('PRETRAINED_PATH')
    os.environ['PRETRAINED_PATH'] = str(bundled_data_path('tokenizer'))
    try: mod = _load('colossalchat_test_chat_prompt', INFERENCE / 'tests' / 'test_chat_prompt.py', {'utils': cc_utils})
    finally:
        if old is None: os.environ.pop('PRETRAINED_PATH')
        else: os.environ['PRETRAINED_PATH'] = old
    return mod


@pytest.fixture(scope='module')
def tok(): return load_tokenizer()


def _messages(history) -> list[dict]:
    "ColossalChat's history (Dialogue objects or dicts) as chat messages, the last dialogue's empty response dropped."
    d = [h if isinstance(h, dict) else h.model_dump() for h in history]
    out = []
    for h in d[:-1]: out += [{'role': 'user', 'content': h['instruction']}, {'role': 'assistant', 'content': h['response']}]
    return out + [{'role': 'user', 'content': d[-1]['instruction']}]


def _theirs(cc_utils, tok, history, max_new_tokens, max_len, context):
    "ColossalChat's prompt, or the exception it raises (it pops the last dialogue, so it gets a copy)."
    p = cc_utils.ChatPromptProcessor(tok, context, max_len)
    try: return p.preprocess_prompt(copy.deepcopy(history), max_new_tokens)
    except Exception as e: return e


def _ours(tok, history, max_new_tokens, max_len, context):
    try: return colossalchat_prompt(tok, _messages(history), max_len - max_new_tokens, context).text
    except PromptTooLong as e: return e


def test_reference_context_is_ours(cc_cases):
    assert cc_cases.CONTEXT == COLOSSALCHAT_CONTEXT


def test_reference_cases(cc_utils, cc_cases, tok):
    """The reference's four cases (max_len 256, as its test): same prompt, or both refuse. Its expected strings were made
    with a LLaMA tokenizer; ours spends more tokens per word, so the branches taken differ for cases 1 and 3."""
    samples = copy.deepcopy(cc_cases.samples)            # its own test pops from these lists
    got = []
    for history, max_new_tokens, expected in samples:
        theirs = _theirs(cc_utils, tok, history, max_new_tokens, 256, cc_cases.CONTEXT)
        ours = _ours(tok, history, max_new_tokens, 256, cc_cases.CONTEXT)
        if isinstance(theirs, Exception):
            assert isinstance(ours, PromptTooLong), (max_new_tokens, theirs, ours)
            got.append(type(theirs).__name__)
        else:
            assert ours == theirs, max_new_tokens
            got.append(ours == expected)
    # case 1 drops the 189-token answer (LLaMA's tokens fit it); 2 and 4 give the reference's expected text;
    # case 3: 256 - 211 leaves less than the preamble plus an empty turn, so ColossalChat's tokenizer call overflows
    assert got == [False, True, 'OverflowError', True], got


def _histories(cc_cases):
    "The reference's histories plus a longer one (3 past turns of different lengths), to reach every branch."
    hs = [h for h, _, _ in copy.deepcopy(cc_cases.samples)]
    D = cc_cases.Dialogue
    hs.append([D(instruction='什么是 RLHF？', response='基于人类反馈的强化学习 reinforcement learning from human feedback.'),
               D(instruction='And PPO?', response='Proximal policy optimisation: a clipped policy-gradient method. ' * 3),
               D(instruction='再短一点', response='PPO 裁剪比率。'),
               D(instruction='Summarise all of that in one line, please, and mention the reward model too.', response='')])
    return hs


def test_every_budget_same_prompt(cc_utils, cc_cases, tok):
    "Every max_new_tokens from 1 to max_len - 1 (max_len 256 and 512): identical prompts, identical refusals."
    branches = {'all history': 0, 'some history': 0, 'no history': 0, 'cut instruction': 0, 'refused': 0}
    for max_len in (256, 512):
        for history in _histories(cc_cases):
            last = history[-1].instruction
            for n in range(1, max_len, 3 if max_len == 512 else 1):
                theirs = _theirs(cc_utils, tok, history, n, max_len, cc_cases.CONTEXT)
                ours = _ours(tok, history, n, max_len, cc_cases.CONTEXT)
                if isinstance(theirs, Exception):
                    assert isinstance(theirs, OverflowError) and isinstance(ours, PromptTooLong), (max_len, n, theirs, ours)
                    branches['refused'] += 1; continue
                assert ours == theirs, (max_len, n)
                kept = sum(h.instruction in ours for h in history[:-1])
                if not ours.rstrip().endswith(last + '\n\n### Response:'): branches['cut instruction'] += 1
                elif kept == len(history) - 1: branches['all history'] += 1
                elif kept: branches['some history'] += 1
                else: branches['no history'] += 1
    assert all(branches.values()), branches


def test_template_and_engine_use_the_rule(cc_utils, cc_cases, tok):
    "The 'coati' template renders ColossalChat's text, and ChatEngine(template='coati') builds its prompt (MAX_LEN 512)."
    history = _histories(cc_cases)[-1]
    whole = cc_cases.CONTEXT + ''.join(cc_utils._format_dialogue(h.instruction, h.response) for h in history)
    assert render_chat(_messages(history), 'coati') == whole
    model, _ = tiny_chat_model()
    engine = ChatEngine(model, tok, 'coati', context_len=512)
    for n in (1, 64, 300, 460, 480):
        theirs = _theirs(cc_utils, tok, history, n, 512, cc_cases.CONTEXT)
        if isinstance(theirs, Exception):                    # 480: not even the preamble and an empty turn fit
            with pytest.raises(PromptTooLong, match='lower max_new_tokens'): engine.prompt(_messages(history), n)
            continue
        assert engine.prompt(_messages(history), n).text == theirs, n
        assert build_prompt(tok, _messages(history), 512 - n, 'coati').text == theirs, n


def test_postprocess_stop_strings(cc_utils):
    "ColossalChat cuts the answer at '###' or 'instruction:' (any case); the coati template stops at the common spellings."
    from coati_nb.inference import get_template, StopFilter
    p = cc_utils.ChatPromptProcessor(None, '')
    for raw in ('Jordan.\n\n### Instruction:\nmore', 'Jordan. Instruction: more', 'Jordan. instruction: x', 'Jordan.### x'):
        f = StopFilter(get_template('coati').stop)
        text, hit = f.push(raw)
        assert hit and text.strip() == p.postprocess_output(raw), raw


class _Response:
    "What locust's `catch_response=True` context gives: the status and success()/failure()."
    def __init__(self, r): self.status_code, self.text, self.outcome = r.status_code, r.text, None
    def success(self): self.outcome = 'success'
    def failure(self, why): self.outcome = f'failure: {why}'
    def __enter__(self): return self
    def __exit__(self, *exc): return False


class _LocustClient:
    "locust's HttpSession, played by FastAPI's TestClient: records every request the reference's task makes."
    def __init__(self, client): self.client, self.calls = client, []
    def post(self, path, json=None, catch_response=False):
        r = _Response(self.client.post(path, json=json))
        self.calls.append((path, json, r))
        return r


@pytest.mark.parametrize('template', ['sft', 'coati'])
def test_locustfile_requests(template):
    "The reference's own load-test task (inference/locustfile.py) posts its two bodies to our /generate: 200 and text."
    from fastapi.testclient import TestClient
    locust = types.ModuleType('locust')
    class HttpUser: pass
    locust.HttpUser, locust.task = HttpUser, (lambda f: f)
    lf = _load('colossalchat_locustfile', INFERENCE / 'locustfile.py', {'locust': locust})
    model, tok = tiny_chat_model()
    app = create_app(ChatEngine(model, tok, template, context_len=512), ServeConfig(max_new_tokens=512))
    with TestClient(app) as client:
        user = lf.GenerationUser()
        user.client = _LocustClient(client)
        user.generate()
        calls = user.client.calls
    assert [(path, body) for path, body, _ in calls] == [('/generate', {'max_new_tokens': 64, 'history': s}) for s in lf.samples]
    for _, _, r in calls:
        assert (r.status_code, r.outcome) == (200, 'success'), r.text
        assert isinstance(json.loads(r.text), str)        # ColossalChat's /generate answers a JSON string


def test_command_line_accepts_coati_template():
    "`coati_nb_serve --template coati` (and `coati_nb_chat`) select ColossalChat's prompt rule; nf4/fp4 are precisions."
    import argparse
    from coati_nb.inference import _common_args, load_engine
    p = argparse.ArgumentParser()
    _common_args(p)
    a = p.parse_args(['--template', 'coati', '--precision', 'nf4'])
    assert (a.template, a.precision) == ('coati', 'nf4')
    assert load_engine(template='coati').template.truncation == 'colossalchat'
