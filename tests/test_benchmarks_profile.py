"The profiling benchmarks run end to end at tiny sizes: every row present, parts within the whole, MFU a fraction, counts right (no timing asserted)."
import json, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_SIZES = {'a': {'hidden_size': 32, 'num_layers': 1, 'num_heads': 2}, 'b': {'hidden_size': 64, 'num_layers': 2, 'num_heads': 4}}


def _run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/script), *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    if check and r.returncode != 0: raise AssertionError(f"{script} failed:\n{r.stdout}\n{r.stderr[-3000:]}")
    return r


def _lm_parameters(hidden: int, layers: int, heads: int, max_len: int = 80) -> int:
    "count_parameters of the pipeline's tiny LLaMA of this size, built here independently of the scripts."
    from coati_nb.models import family_class
    from coati_nb.pipeline import PipelineConfig, tiny_llama_config
    from coati_nb.tokenizer import load_tokenizer
    from coati_nb.utils import count_parameters
    cfg = PipelineConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, max_len=max_len)
    return count_parameters(family_class('llama', 'lm')(config=tiny_llama_config(load_tokenizer(), cfg)))[1]


@pytest.fixture(scope='module')
def profile(tmp_path_factory):
    out = tmp_path_factory.mktemp('profile')/'profile.json'
    r = _run('profile_ppo.py', '--updates', '2', '--warmup', '0', '--experience-batch-size', '4', '--train-batch-size', '2',
             '--ppo-epochs', '1', '--max-new-tokens', '3', '--threads', '1', '--sizes', json.dumps(TINY_SIZES), '--json', str(out))
    return r.stdout, json.loads(out.read_text())


def test_profile_ppo_rows_and_sums(profile):
    stdout, res = profile
    rows = res['rows']
    assert len(rows) == 14 and 'generation' in rows and 'learn: PTX backward' in rows and 'exp: actor sampling log-probs' in rows
    for label in rows + ['sum of the parts', 'other (the rest)', 'whole update (measured)']:
        assert re.search(rf'^{re.escape(label)}\s+[-\d.]+\s', stdout, re.M), f"row {label!r} missing from the table"
    assert 'torch threads 1' in stdout and 'generated tokens/s' in stdout
    assert list(res['sizes']) == ['a', 'b'] and res['machine']['torch_threads'] == 1
    for name, s in res['sizes'].items():
        assert set(s['parts']) == set(rows)
        assert all(v >= 0 for v in s['parts'].values()), (name, s['parts'])
        assert all(s['parts'][r] > 0 for r in ('generation', 'exp: actor sampling log-probs', 'learn: PTX forward',
                                               'learn: critic optimizer step')), (name, s['parts'])
        assert sum(s['parts'].values()) <= s['whole'] + 1e-3, (name, s['parts'], s['whole'])
        assert s['other'] == pytest.approx(s['whole'] - sum(s['parts'].values()))
        assert len(s['whole_all']) == 2 and s['tokens_per_s'] > 0
        assert 0 < s['generated_tokens'] <= s['generated_positions'] == 2 * 4 * 3   # 2 rollouts × 4 prompts × 3 tokens
        assert not s['warnings']


def test_profile_ppo_parameter_count(profile):
    stdout, res = profile
    for name, ov in TINY_SIZES.items():
        n = _lm_parameters(ov['hidden_size'], ov['num_layers'], ov['num_heads'])
        assert res['sizes'][name]['parameters'] == n
        assert f"{name}: hidden {ov['hidden_size']}, {ov['num_layers']} layers, {ov['num_heads']} heads, {n:,} parameters" in stdout


def test_mfu_fraction_and_parameter_count(tmp_path):
    out = tmp_path/'mfu.json'
    r = _run('mfu.py', '--hidden', '64', '--layers', '2', '--heads', '4', '--small', '32,1,2', '--steps', '2', '--warmup', '1',
             '--threads', '1', '--matmul-sizes', '128,256', '--repeats', '2', '--batch-size', '4', '--json', str(out))
    res = json.loads(out.read_text())
    assert 'FLOPs per token: 6*N_non_embedding + 12*n_layers*d*seq' in r.stdout
    for name, (h, l, nh) in {'large': (64, 2, 4), 'demo': (32, 1, 2)}.items():
        m = res['models'][name]
        n = _lm_parameters(h, l, nh)
        assert m['parameters'] == n and f"{name}: hidden {h}, {l} layers, {nh} heads; parameters: {n:,}" in r.stdout
        assert 0 < m['non_embedding'] < m['parameters']
        run = m['runs']['1']
        assert 0 < run['mfu'] <= 1 and 0 < run['mfu_cpu'] <= 1, (run['mfu'], run['mfu_cpu'])
        assert run['mfu'] == pytest.approx(run['flops_per_s'] / res['peak']['1']['peak'])
        assert run['mfu_cpu'] == pytest.approx(run['flops_per_cpu_s'] / res['peak']['1']['peak_cpu'])
        assert len(run['step_times']) == 3 and all(t > 0 for t in run['step_times'])
    assert re.search(r'^\s+1\s+large\s+[\d.]+\s', r.stdout, re.M) and 'MFU ratio large/demo' in r.stdout


def _script(name: str):
    "A benchmark script imported as a module (its `main` does not run)."
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'_bench_{name[:-3]}', ROOT/'benchmarks'/name)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('script,args,msg', [
    ('profile_ppo.py', ['--sizes', '{"a": {}}'], '--sizes must be a JSON object of exactly two'),
    ('profile_ppo.py', ['--sizes', '{"a": {}, "b": {"hidden": 64}}'], "--sizes['b']: ['hidden'] are not PipelineConfig fields"),
    ('profile_ppo.py', ['--updates', '0'], '--updates must be >= 1, got 0'),
    ('profile_ppo.py', ['--min-new-tokens', '20'], '--min-new-tokens must be in [0, --max-new-tokens=16], got 20'),
    ('mfu.py', ['--threads', 'two'], "--threads must be comma-separated integers, got 'two'"),
    ('mfu.py', ['--small', '128,4'], '--small must be hidden,layers,heads'),
    ('mfu.py', ['--hidden', '100', '--heads', '8'], '--hidden/--heads: hidden size 100 is not divisible by 8 heads'),
])
def test_bad_flags_are_named(script, args, msg, capsys):
    with pytest.raises(SystemExit) as e: _script(script).parse_args(args)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_default_sizes_are_the_demo_and_the_wide_model():
    a = _script('profile_ppo.py').parse_args([])
    assert list(a.sizes) == ['default', 'wide'] and a.sizes['default'] == {} and a.min_new_tokens == a.max_new_tokens == 16
    assert a.sizes['wide'] == dict(hidden_size=256, num_layers=4, num_heads=8) and 'costs the default' in a.preset_source
