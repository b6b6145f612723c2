"""`coati_nb_pipeline --ladder` end to end on a tiny configuration, and the README's ladder table.

- The console script trains the chosen rungs from one SFT model and writes ladder.json, ladder.md and plots/ladder.png.
- The same seed gives the same ladder.json (apart from the recorded seconds), in a fresh folder and in any rung order.
- `--resume` reuses finished rungs (their files are not rewritten).
- Each README ladder table is exactly `ladder_table` of a committed docs/ladder/*.json (real `make ladder` runs)."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = ['--hidden_size', '32', '--num_layers', '1', '--num_heads', '2', '--pt_epochs', '0', '--sft_epochs', '1',
        '--sft_max_samples', '64', '--sft_batch_size', '16', '--rm_epochs', '1', '--rm_max_samples', '64', '--rm_batch_size', '16',
        '--num_episodes', '1', '--max_timesteps', '2', '--update_timesteps', '2', '--experience_batch_size', '8',
        '--train_batch_size', '8', '--ppo_epochs', '1', '--eval_samples', '1', '--max_new_tokens', '4', '--sft_noise', '0',
        '--max_eval_prompts', '12']


def _ladder(out: Path, *extra: str) -> dict:
    r = subprocess.run([str(BIN/'coati_nb_pipeline'), '--ladder', '--out', str(out), *TINY, *extra],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert 'table:' in r.stdout
    return json.loads((out/'ladder.json').read_text())


def _numbers(summary: dict) -> dict:
    "Every rung's figures without the wall-clock ones."
    return {k: {f: v for f, v in row.items() if not f.endswith('seconds')} for k, row in summary['rungs'].items()}


@pytest.fixture(scope='module')
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp('ladder')
    return out, _ladder(out, '--rungs', 'ppo,grpo_gold,remax_gold,ipo')


def test_ladder_writes_its_table_and_plot(first):
    out, s = first
    assert list(s['rungs']) == ['sft', 'ppo', 'grpo_gold', 'remax_gold', 'ipo']
    assert s['n_eval_prompts'] == 12 and s['config']['sft_noise'] == 0.0
    md = (out/'ladder.md').read_text(encoding='utf-8')
    for rung in s['rungs']: assert f'| {rung} |' in md
    assert (out/'plots'/'ladder.png').stat().st_size > 1000
    r = s['rungs']
    assert r['ppo']['generated_answers'] == r['grpo_gold']['generated_answers'] == 16     # the matched budget
    assert r['remax_gold']['generated_tokens'] > r['remax_gold']['generated_answers']      # greedy baselines counted too
    assert r['ipo']['generated_answers'] == 0 and r['sft']['kl_to_sft'] == 0.0


def test_same_seed_same_ladder_in_any_order(first, tmp_path):
    _, s = first
    again = _ladder(tmp_path/'again', '--rungs', 'ipo,grpo_gold')           # another folder, another order, fewer rungs
    want = _numbers(s)
    for rung, row in _numbers(again).items(): assert row == want[rung], rung


def test_resume_reuses_finished_rungs(first):
    out, s = first
    stamp = {f.name: f.stat().st_mtime_ns for f in (out/'ladder').glob('*.json')}
    resumed = _ladder(out, '--rungs', 'ppo,grpo_gold,remax_gold,ipo', '--resume')
    assert {f.name: f.stat().st_mtime_ns for f in (out/'ladder').glob('*.json')} == stamp
    assert _numbers(resumed) == _numbers(s)


def test_readme_tables_are_the_committed_runs():
    sys.path.insert(0, str(ROOT))
    from coati_nb.ladder import LADDER, ladder_table
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    runs = sorted((ROOT/'docs'/'ladder').glob('*.json'))
    assert ROOT/'docs'/'ladder'/'ladder.json' in runs                       # `make ladder`'s default run
    for f in runs:
        committed = json.loads(f.read_text(encoding='utf-8'))
        assert ladder_table(committed) in readme, f.name
        assert committed['config']['sft_noise'] == 0.0 and set(committed['rungs']) <= set(LADDER), f.name
    main = json.loads((ROOT/'docs'/'ladder'/'ladder.json').read_text(encoding='utf-8'))
    assert list(main['rungs']) == list(LADDER)                               # the default run has every rung
