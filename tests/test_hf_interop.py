"""The folders a tiny coati_nb run writes load in plain transformers and peft, with no coati_nb import, and give
coati_nb's numbers (issue 12, item 2): in a fresh venv with transformers 4.51.3 (colossalai 0.5.0's pin) and in the
current venv (transformers 5.x), each a parameter, so a failure names the version.

In this venv the console scripts make a tiny run (SFT; SFT with LoRA, merged and as a PEFT adapter with
`--merge_lora_weights False`; the default RM, whose biased head transformers cannot hold; an RM with a bias-free head,
`value_head_bias=False`, which it holds exactly); coati_nb
computes reference numbers on fixed inputs (causal-LM logits and RM scores, with left and right padding; the prompt
text the trainers build with coati_nb.prompts) and writes them to reference.json (+ reference.safetensors for the
tensors). tests/_hf_check.py then loads every folder with AutoTokenizer / AutoModelForCausalLM /
AutoModelForSequenceClassification / PeftModel (coati_nb blocked at import) and compares to 1e-5; apply_chat_template
must give the trainers' prompt text. A reward-model folder may instead refuse to load (loudly), never score at random.
Slow: the 4.51.3 venv is installed from the package index (a few minutes)."""
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest, torch
from safetensors.torch import save_file
from _venv import make_venv, run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHECKER = ROOT/'tests'/'_hf_check.py'
TOL = 1e-5
# colossalai 0.5.0 pins transformers 4.51.3; peft 0.15.2 is the release of the same week (it installs cleanly beside it)
TRANSFORMERS_4 = ('transformers==4.51.3', 'peft==0.15.2', 'safetensors', 'jinja2')
TINY = ['--max_len', '64', '--batch_size', '8', '--log_interval', '1', '--max_datasets_size', '16', '--seed', '3']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}


def _cli(script, *args):
    return run(BIN/script, *args, env=ENV, timeout=900)


def _lm_adapter(d: Path, name: str) -> str:
    "An SFT model with LoRA written as a PEFT adapter (adapter files + base_model/), by the CLI."
    _cli('coati_nb_train_sft', '--save_path', d/name, '--lora_rank', '4', '--merge_lora_weights', 'False', '--lr', '1e-3', *TINY)
    return 'coati_nb_train_sft --lora_rank 4 --merge_lora_weights False'


def _exact_rm(d: Path, name: str) -> str:
    "A reward model transformers scores exactly (a value head without bias), trained by the CLI from a folder holding it."
    from coati_nb.models import family_class
    from coati_nb.pipeline import _save_hf
    from coati_nb.tokenizer import load_tokenizer
    start = family_class('llama', 'rm')(pretrained=d/'sft', value_head_bias=False)
    _save_hf(start, load_tokenizer(d/'sft'), d/f'{name}_start')
    _cli('coati_nb_train_rm', '--pretrain', d/f'{name}_start', '--save_path', d/name, '--lr', '1e-4', *TINY)
    return 'coati_nb_train_rm --pretrain (a bias-free head: value_head_bias=False)'


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    "The folders of a tiny run, written by the console scripts; and {folder: why it could not be made} for the new formats."
    d = tmp_path_factory.mktemp('run')
    _cli('coati_nb_train_sft', '--save_path', d/'sft', '--lr', '1e-3', *TINY)
    _cli('coati_nb_train_sft', '--save_path', d/'sft_lora', '--lora_rank', '4', '--lr', '1e-3', *TINY)
    _cli('coati_nb_train_rm', '--pretrain', d/'sft', '--save_path', d/'rm', '--lr', '1e-4', *TINY)
    missing = {}
    for name, make in (('sft_adapter', _lm_adapter), ('rm_exact', _exact_rm)):
        try: print(f'{name}: {make(d, name)}')
        except Exception as e: missing[name] = f'{type(e).__name__}: {e}'
    return d, missing


def _texts() -> tuple[list[dict], list[str]]:
    "Bundled SFT rows (English and Chinese) as the trainers write them, and a short text, so a batch needs padding."
    from coati_nb.dataset import read_rows
    from coati_nb.prompts import format_prompt
    from coati_nb.toy_task import toy_data_path
    rows = read_rows(toy_data_path('sft'))[:3]
    return rows, [format_prompt(r['instruction'], r['input']) + r['output'] for r in rows] + ['Hello.']


class _Reference:
    "The spec for tests/_hf_check.py, and coati_nb's tensors on the padded batches (one entry per folder and side)."
    def __init__(self, d: Path):
        self.d, self.tensors, self.spec = d, {}, {'tensors': str(d/'reference.safetensors'), 'tol': TOL}

    def add(self, kind: str, **item): self.spec.setdefault(kind, []).append(item)

    def sides(self, model, tokenizer, texts: list[str], key: str) -> dict:
        "coati_nb's output for `texts` padded on the left and on the right; {side: key of its tensors}."
        out = {}
        for side in ('left', 'right'):
            tokenizer.padding_side = side
            b = tokenizer(texts, padding=True, return_tensors='pt')
            with torch.no_grad(): y = model(b['input_ids'], attention_mask=b['attention_mask'])
            out[side] = k = f'{key}/{side}'
            self.tensors.update({f'{k}/input_ids': b['input_ids'], f'{k}/attention_mask': b['attention_mask'],
                                 f'{k}/out': y.float().contiguous()})
        return out

    def write(self) -> Path:
        save_file(self.tensors, self.spec['tensors'])
        (self.d/'reference.json').write_text(json.dumps(self.spec, ensure_ascii=False, indent=1))
        return self.d/'reference.json'


def _chat_cases(rows: list[dict], eos: str) -> list[dict]:
    "Messages and the text coati_nb's trainers (and its chat server) build for them."
    from coati_nb.prompts import format_prompt, render_chat
    user = lambda r: {'role': 'user', 'content': r['instruction']}
    plain = [r for r in rows if not r['input']]            # a chat template has no 'input' field: rows without one
    history = [{'role': 'system', 'content': 'Answer briefly.'}, user(plain[0]),
               {'role': 'assistant', 'content': plain[0]['output']}, user(plain[1])]
    return ([dict(messages=[user(r)], add_generation_prompt=True, text=format_prompt(r['instruction'])) for r in plain]  # SFT prompt
            + [dict(messages=[user(r), {'role': 'assistant', 'content': r['output']}], add_generation_prompt=False,
                    text=format_prompt(r['instruction']) + r['output'] + eos) for r in plain]                        # SFT sample
            + [dict(messages=history, add_generation_prompt=True, text=render_chat(history, 'sft', eos))])           # chat server


@pytest.fixture(scope='module')
def reference(tiny_run) -> Path:
    "coati_nb's numbers for every folder of the run, and what tests/_hf_check.py must reproduce from them."
    from coati_nb.models import family_class
    from coati_nb.tokenizer import load_tokenizer
    (d, missing), ref = tiny_run, _Reference(tiny_run[0])
    ref.spec['missing'] = missing
    rows, texts = _texts()
    lm_cls, rm_cls = family_class('llama', 'lm'), family_class('llama', 'rm')
    for name in ('sft', 'sft_lora'):                     # plain SFT, and SFT with LoRA merged at save time
        sides = ref.sides(lm_cls(pretrained=d/name).eval(), load_tokenizer(d/name), texts, name)
        ref.add('causal_lms', name=name, folder=str(d/name), texts=texts, sides=sides)
    tok = load_tokenizer(d/'sft')
    cases = _chat_cases(rows, tok.eos_token)
    ref.add('chats', name='sft', folder=str(d/'sft'), cases=cases)
    words = texts + [c['text'] for c in cases]
    ref.add('tokenizers', name='sft', folder=str(d/'sft'), texts=words, ids=[tok(t)['input_ids'] for t in words])
    sides = ref.sides(rm_cls(pretrained=d/'rm').eval(), load_tokenizer(d/'rm'), texts, 'rm')
    ref.add('reward_models', name='rm', folder=str(d/'rm'), texts=texts, sides=sides, expect='exact_or_refused')
    if 'rm_exact' not in missing:
        sides = ref.sides(rm_cls(pretrained=d/'rm_exact').eval(), load_tokenizer(d/'rm_exact'), texts, 'rm_exact')
        ref.add('reward_models', name='rm_exact', folder=str(d/'rm_exact'), texts=texts, sides=sides, expect='exact')
    if 'sft_adapter' not in missing:                     # coati_nb reads the adapter folder back (base_model/ + LoRA)
        a = d/'sft_adapter'
        base = json.loads((a/'adapter_config.json').read_text())['base_model_name_or_path']
        sides = ref.sides(lm_cls(pretrained=a).eval(), load_tokenizer(a), texts, 'sft_adapter')
        ref.add('adapters', name='sft_adapter', folder=str(a), base=str(a/base), texts=texts, sides=sides)
    return ref.write()


def _venv_4(where: Path) -> Path:
    venv = make_venv(where, *TRANSFORMERS_4, env={**os.environ, 'PIP_CACHE_DIR': str(where/'pip-cache')})
    run(venv/'bin'/'python', '-m', 'pip', 'check')
    return venv/'bin'/'python'


@pytest.fixture(scope='module')
def venv_4(tmp_path_factory):
    "A fresh venv with transformers 4.51.3 and peft, no coati_nb, `pip check` clean: a future of its python, built while the CLIs train."
    with ThreadPoolExecutor(1) as pool: yield pool.submit(_venv_4, tmp_path_factory.mktemp('venv_4'))


@pytest.fixture(scope='module', params=['4.51.3', 'current'], ids=lambda v: f'transformers-{v}')
def loaded(request, tmp_path_factory) -> dict:
    "tests/_hf_check.py's results in one venv: the 4.51.3 one, or this one (coati_nb blocked at import)."
    venv = request.getfixturevalue('venv_4') if request.param != 'current' else None    # pip starts now ...
    reference = request.getfixturevalue('reference')                                     # ... while the run trains
    python = venv.result() if venv is not None else Path(sys.executable)
    where = tmp_path_factory.mktemp('check')
    env = {k: v for k, v in ENV.items() if not k.startswith('PYTHON')}
    env.update(HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_HOME=str(where/'hf'), PYTHONWARNINGS='ignore')
    run(python, '-I', CHECKER, reference, where/'result.json', env=env, cwd=where, timeout=900)
    result = json.loads((where/'result.json').read_text())
    if request.param != 'current': assert result['versions']['transformers'] == request.param, result['versions']
    result['missing'] = json.loads(Path(reference).read_text())['missing']
    for c in result['checks']: print(f"{c['kind']} {c['name']}: {'ok' if c['ok'] else 'FAILED'}, {c['detail'].splitlines()[0]}")
    return result


def _checks(loaded: dict, kind: str, name: str|None = None) -> list[dict]:
    "The checks of one kind (and folder); every one must have passed."
    found = [c for c in loaded['checks'] if c['kind'] == kind and name in (None, c['name'])]
    assert found, f"no {kind} {name or ''} were checked"
    bad = [f"{c['name']}: {c['detail']}" for c in found if not c['ok']]
    assert not bad, f"transformers {loaded['versions']['transformers']}, peft {loaded['versions']['peft']}:\n" + '\n'.join(bad)
    return found


def test_checker_ran_without_coati_nb(loaded):
    assert loaded['coati_nb_importable'] is False


def test_tokenizer_gives_coati_nbs_ids(loaded):
    _checks(loaded, 'tokenizers')


def test_causal_lm_gives_coati_nbs_logits(loaded):
    _checks(loaded, 'causal_lms')


def test_chat_template_reproduces_the_training_prompt(loaded):
    _checks(loaded, 'chats')


def test_reward_model_scores_exactly_or_refuses(loaded):
    "The CLI's default reward model (ColossalChat's head, with a bias): the same scores, or loading fails; never random scores."
    _checks(loaded, 'reward_models', 'rm')


def _made(loaded: dict, name: str):
    why = loaded['missing'].get(name)
    assert why is None, f"coati_nb did not write {name}: {why}"


def test_exact_reward_model_gives_coati_nbs_scores(loaded):
    _made(loaded, 'rm_exact')
    _checks(loaded, 'reward_models', 'rm_exact')


def test_peft_adapter_gives_coati_nbs_logits(loaded):
    _made(loaded, 'sft_adapter')
    _checks(loaded, 'adapters')
