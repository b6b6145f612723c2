"benchmarks/size_curve.py on one tiny grid point: the records' fields and types, resuming, and a bad --grid entry."
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT/'benchmarks'/'size_curve.py'
TINY = '32,1,2,0,1,max_len=48,sft_max_samples=64'   # canonical order: the five sizes, then the overrides sorted


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_size_curve_records_and_resume(tmp_path):
    out = tmp_path/'curve.json'
    r = _run('--grid', TINY, '--out', str(out), '--eval-limit', '8', '--threads', '1', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = json.loads(out.read_text())['records']
    assert len(recs) == 1
    rec = recs[0]
    assert rec['key'] == TINY
    assert rec['overrides'] == {'hidden_size': 32, 'num_layers': 1, 'num_heads': 2, 'pt_epochs': 0, 'sft_epochs': 1,
                                'sft_max_samples': 64, 'max_len': 48}
    assert rec['sft_noise'] == 0.0 and rec['torch_threads'] == 1 and rec['n_prompts'] == 8
    assert isinstance(rec['parameters'], int) and rec['parameters'] > rec['non_embedding_parameters'] > 0
    for k in ('pt_cpu_s', 'sft_cpu_s', 'cpu_s', 'wall_s', 'greedy_gold_reward', 'greedy_length'):
        assert isinstance(rec[k], float), k
    assert rec['cpu_s'] >= 0 and rec['wall_s'] > 0
    for k in ('greedy_correct', 'greedy_exact', 'greedy_eos'): assert 0 <= rec[k] <= 1, k
    assert -1 <= rec['greedy_gold_reward'] <= 1
    assert isinstance(rec['loadavg'], list) and len(rec['loadavg']) == 3
    assert rec['exact_by_task'] and all(0 <= v <= 1 for v in rec['exact_by_task'].values())
    assert (tmp_path/'curve.png').is_file() and (tmp_path/'curve.png').stat().st_size < 200 * 1024

    again = _run('--grid', TINY, '--out', str(out), '--eval-limit', '8', '--plot', 'none', cwd=tmp_path)   # resumed: nothing re-run
    assert again.returncode == 0, again.stderr[-2000:]
    assert f'skip {TINY}' in again.stdout and 'run ' not in again.stdout
    assert json.loads(out.read_text())['records'] == recs


def test_size_curve_bad_grid_entry(tmp_path):
    r = _run('--grid', '32,1,2,0,1', '128,4,x,2,2', '--out', str(tmp_path/'x.json'), cwd=tmp_path)
    assert r.returncode == 2 and "--grid entry '128,4,x,2,2': num_heads must be an integer" in r.stderr, r.stderr
    assert not (tmp_path/'x.json').exists()                     # refused before any run


def test_parse_point_names_the_bad_entry():
    import pytest
    from coati_nb.size_curve import parse_point
    for bad, says in [('128,4,4', 'HIDDEN,LAYERS'), ('100,4,3,2,2', 'not divisible'), ('128,4,4,2,2,lr_typo=1', "'lr_typo=1'"),
                      ('128,4,4,2,0', 'sft_epochs'), ('128,4,4,2,2,sft_lr=fast', "sft_lr='fast'"), ('0,4,4,2,2', '>= 1')]:
        with pytest.raises(ValueError) as e: parse_point(bad)
        assert f'--grid entry {bad!r}' in str(e.value) and says in str(e.value), (bad, str(e.value))
