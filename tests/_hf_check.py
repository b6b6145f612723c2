"""Load the folders of a tiny coati_nb run with plain transformers and peft — never coati_nb — and compare with the
numbers coati_nb computed (tests/test_hf_interop.py writes them). Runs in a venv of its own (transformers 4.51.3) or in
the current one, as `python -I _hf_check.py SPEC.json RESULT.json`; coati_nb is blocked at import, so a folder that
needs coati_nb's code to load fails here.

SPEC.json: {"tensors": file of reference tensors (safetensors), "tol": 1e-5,
            "tokenizers": [{"folder", "texts", "ids"}], "causal_lms": [{"folder", "texts", "sides": {side: key}}],
            "chats": [{"folder", "cases": [{"messages", "add_generation_prompt", "text"}]}],
            "reward_models": [{"folder", "texts", "sides": {side: key}, "expect": "exact"|"exact_or_refused"}],
            "adapters": [{"folder", "base", "texts", "sides": {side: key}}]}
For each `key`, the tensors file holds `key/input_ids`, `key/attention_mask` and `key/out` (logits or scores).
RESULT.json: {"versions": {...}, "coati_nb_importable": bool, "checks": [{"kind", "name", "ok", "detail"}]}."""
import importlib.abc, sys


class _NoCoati(importlib.abc.MetaPathFinder):
    "An import of coati_nb fails: the folders must load with plain transformers / peft (even where coati_nb is installed)."
    def find_spec(self, name, path=None, target=None):
        if name == 'coati_nb' or name.startswith('coati_nb.'):
            raise ModuleNotFoundError(f"{name} is blocked in this check: the folders must load without coati_nb", name=name)
        return None

sys.meta_path.insert(0, _NoCoati())

import json, traceback                                                        # noqa: E402
from pathlib import Path                                                      # noqa: E402
import torch, transformers                                                    # noqa: E402
from safetensors.torch import load_file                                       # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer   # noqa: E402


def _ids(x) -> list[int]:
    "input_ids of what a tokenizer call or apply_chat_template returns (a list, or a dict in newer transformers)."
    if hasattr(x, 'keys'): x = x['input_ids']
    return list(x.tolist() if hasattr(x, 'tolist') else x)


def _batch(tok, texts, side, ref, key):
    "The user's batch: the tokenizer pads on `side`; it must give the ids and mask coati_nb used."
    tok.padding_side = side
    batch = tok(texts, padding=True, return_tensors='pt')
    for k in ('input_ids', 'attention_mask'):
        want = ref[f'{key}/{k}']
        assert torch.equal(batch[k], want.to(batch[k].dtype)), \
            f"{side} padding: the tokenizer's {k} {batch[k].tolist()} differ from coati_nb's {want.tolist()}"
    return {k: batch[k] for k in ('input_ids', 'attention_mask')}


def _clean_load(cls, folder, **kw):
    "from_pretrained, and a clear failure when any weight is missing, unexpected or of the wrong shape (random weights)."
    model, info = cls.from_pretrained(folder, output_loading_info=True, local_files_only=True, **kw)
    bad = {k: list(v) for k, v in info.items() if k in ('missing_keys', 'unexpected_keys', 'mismatched_keys') and v}
    assert not bad, f"{cls.__name__}.from_pretrained({folder}) loads with {bad}: those weights would be random or dropped"
    return model.eval()


def _close(got, want, what, tol):
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= tol, f"{what}: max |plain - coati_nb| = {diff:.3g} > {tol}"
    return diff


def check_tokenizer(spec, ref, tol):
    tok = AutoTokenizer.from_pretrained(spec['folder'], local_files_only=True)
    for text, want in zip(spec['texts'], spec['ids']):
        got = _ids(tok(text))
        assert got == want, f"{type(tok).__name__} tokenizes {text!r} as {got}, coati_nb as {want}"
    return f"{type(tok).__name__}: {len(spec['texts'])} texts give coati_nb's ids"


def _logits_check(model, tok, spec, ref, tol):
    out = []
    for side, key in spec['sides'].items():
        batch = _batch(tok, spec['texts'], side, ref, key)
        with torch.no_grad(): logits = model(**batch).logits
        real = batch['attention_mask'].bool()                      # padding positions are nobody's prediction
        out.append(f"{side}: {_close(logits[real], ref[f'{key}/out'][real], f'{side} padding logits', tol):.2g}")
    return out


def check_causal_lm(spec, ref, tol):
    tok = AutoTokenizer.from_pretrained(spec['folder'], local_files_only=True)
    model = _clean_load(AutoModelForCausalLM, spec['folder'])
    return f"{type(model).__name__}, max diff " + ', '.join(_logits_check(model, tok, spec, ref, tol))


def check_chat(spec, ref, tol):
    tok = AutoTokenizer.from_pretrained(spec['folder'], local_files_only=True)
    assert tok.chat_template, f"the tokenizer in {spec['folder']} has no chat_template"
    for case in spec['cases']:
        got = tok.apply_chat_template(case['messages'], tokenize=False, add_generation_prompt=case['add_generation_prompt'])
        assert got == case['text'], f"apply_chat_template({case['messages']}) gives\n{got!r}\nthe trainers used\n{case['text']!r}"
    return f"{len(spec['cases'])} chats render as the trainers' prompts"


def check_reward_model(spec, ref, tol):
    tok = AutoTokenizer.from_pretrained(spec['folder'], local_files_only=True)
    try: model = _clean_load(AutoModelForSequenceClassification, spec['folder'])
    except AssertionError: raise
    except Exception as e:                                             # refused loudly: acceptable where it cannot be exact
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        assert spec['expect'] == 'exact_or_refused', f"expected exact scores, but loading raised {msg}"
        return f"refused: {msg}"
    diffs = []
    for side, key in spec['sides'].items():
        batch = _batch(tok, spec['texts'], side, ref, key)
        with torch.no_grad(): scores = model(**batch).logits
        assert scores.shape == (len(spec['texts']), 1), f"scores of shape {tuple(scores.shape)}, expected ({len(spec['texts'])}, 1)"
        diffs.append(f"{side}: {_close(scores[:, 0], ref[f'{key}/out'], f'{side} padding scores', tol):.2g}")
    return f"{type(model).__name__}, max diff " + ', '.join(diffs)


def check_adapter(spec, ref, tol):
    from peft import PeftModel
    tok = AutoTokenizer.from_pretrained(spec['folder'], local_files_only=True)
    base = _clean_load(AutoModelForCausalLM, spec['base'])
    model = PeftModel.from_pretrained(base, spec['folder'], local_files_only=True).eval()
    return f"PeftModel over {type(base).__name__}, max diff " + ', '.join(_logits_check(model, tok, spec, ref, tol))


def _where(e: Exception) -> str:
    "The line of this script an exception came through, e.g. 'check_tokenizer, _hf_check.py:64'."
    mine = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
    return f"{mine[-1].name}, _hf_check.py:{mine[-1].lineno}" if mine else 'outside the checks'


CHECKS = {'tokenizers': check_tokenizer, 'causal_lms': check_causal_lm, 'chats': check_chat,
          'reward_models': check_reward_model, 'adapters': check_adapter}


def main(spec_path, result_path):
    spec = json.loads(Path(spec_path).read_text())
    ref, tol = load_file(spec['tensors']), spec['tol']
    checks = []
    for kind, check in CHECKS.items():
        for item in spec.get(kind, []):
            try: ok, detail = True, check(item, ref, tol)
            except AssertionError as e: ok, detail = False, str(e)
            except Exception as e: ok, detail = False, f"{type(e).__name__}: {e} ({_where(e)})"
            checks.append({'kind': kind, 'name': item['name'], 'ok': ok, 'detail': detail})
    try: import coati_nb  # noqa: F401
    except ModuleNotFoundError: importable = False
    else: importable = True
    import peft, tokenizers
    versions = {m.__name__: m.__version__ for m in (torch, transformers, peft, tokenizers)}
    loaded = sorted(m for m in sys.modules if m == 'coati_nb' or m.startswith('coati_nb.'))
    Path(result_path).write_text(json.dumps({'versions': versions, 'coati_nb_importable': importable or bool(loaded),
                                             'checks': checks}, indent=1))


if __name__ == '__main__':
    main(*sys.argv[1:])
