"""coati_nb's DPO / IPO, GRPO and RLOO losses and advantages equal TRL 1.12.0's own code on the same tensors.

`benchmarks/trl_losses.py` does the comparing (see its docstring); this test installs TRL once, without its
dependencies, into `.venv/trl-1.12.0/` (never into the venv's site-packages: coati_nb does not depend on TRL), runs
the script, and checks that it exits 0, that every row of its table was compared and within tolerance, and that
every loss family, loss type and option the comparison promises is in the table. Installing from the package index
makes the first run slower (a few seconds); later runs reuse the folder."""
import importlib.util, json, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'benchmarks' / 'trl_losses.py'
pytestmark = pytest.mark.slow


def _script():
    spec = importlib.util.spec_from_file_location('trl_losses', SCRIPT)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)       # defines functions, imports no TRL
    return mod


@pytest.fixture(scope='module')
def trl_dir() -> Path:
    mod = _script()
    try: return mod.install_trl(mod.TRL_DIR)
    except RuntimeError as e: pytest.fail(str(e))                                 # pip's own message, never a skip


@pytest.fixture(scope='module')
def result(trl_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('trl_losses') / 'rows.json'
    r = subprocess.run([sys.executable, str(SCRIPT), '--trl-dir', str(trl_dir), '--json', str(out)],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=900)
    return r, (json.loads(out.read_text()) if out.is_file() else None)


def test_trl_is_not_in_the_project_venv():
    "TRL is only in its own folder: the venv's interpreter cannot import it, and coati_nb names it nowhere in code."
    r = subprocess.run([sys.executable, '-c', 'import importlib.util as u; print(u.find_spec("trl") is None)'],
                       capture_output=True, text=True, cwd='/')
    assert r.stdout.strip() == 'True', 'trl is importable from the project venv; it must stay out of it'
    for f in (ROOT / 'coati_nb').glob('*.py'):
        assert not re.search(r'^\s*(import trl|from trl)', f.read_text(encoding='utf-8'), re.M), f'{f.name} imports trl'


def test_every_row_equals_trl(result):
    r, data = result
    assert r.returncode == 0, f'benchmarks/trl_losses.py exited {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}'
    assert data is not None, f'no JSON written\n{r.stderr[-4000:]}'
    rows = data['rows']
    table = [l for l in r.stdout.split('Known differences')[0].splitlines()
             if l.startswith('| ') and not l.startswith('| quantity')]
    assert len(table) == len(rows) > 100, (len(table), len(rows))                  # every printed row is a compared row
    m = re.search(r'^(\d+) rows compared, (\d+) within', r.stdout, re.M)
    assert m and int(m.group(1)) == int(m.group(2)) == len(rows), r.stdout[-3000:]
    bad = [x for x in rows if not (x['ok'] and x['diff'] <= data['tolerance'] and x['n'] > 0)]
    assert not bad, bad


def test_the_table_covers_every_case(result):
    _, data = result
    assert data is not None
    rows = data['rows']
    by = lambda q: [x['case'] for x in rows if x['quantity'] == q]
    dpo = by('dpo: loss per pair')
    for lt in ('sigmoid β', 'ipo β', 'sigmoid ε=0.1'):
        assert sum(c.startswith(lt) for c in dpo) >= 3, lt
    assert by('dpo: chosen reward per pair') and by('dpo: rejected reward per pair') and by('dpo: loss (batch mean)')
    assert any('label_smoothing=0.1 (ignored by TRL)' in c for c in by('dpo: loss (batch mean)'))
    pg = by('grpo: loss')
    assert len(by('grpo: d loss / d log-probs')) == len(pg)
    for lt in ('grpo', 'bnpo', 'dapo', 'dr_grpo'):
        for beta in ('β=0.0 ', 'β=0.04 '):
            assert any(c.startswith(f'{lt} {beta}') for c in pg), (lt, beta)
    assert any('ε_high=0.28' in c for c in pg) and any('per-token A' in c for c in pg) and any('on-policy' in c for c in pg)
    assert any('max_new=' in c for c in pg) and any('kl_ratio_correction=True' in c for c in pg)
    assert any(c.startswith('TRL GRPOConfig defaults') for c in pg)
    for q in ('grpo: advantages (GroupExperienceMaker)', 'grpo: advantages (group_advantages)'):
        cases = by(q)
        assert {f'G={g}' for g in (2, 4, 8)} <= {c.split()[0] for c in cases} and any('scale=none' in c for c in cases)
        assert any('tied group' in c for c in cases)
    rloo = by('rloo: advantages (GroupExperienceMaker)')
    assert any('β=0.0 ' in c for c in rloo) and any('β=0.05' in c for c in rloo)
    assert by('rloo: advantages (group_advantages)')
    assert len(by('rloo: loss')) == len(by('rloo: d loss / d log-probs')) >= 3 and any('off-policy' in c for c in by('rloo: loss'))
    assert len(by('log-probs of the answer tokens')) == 4 and len(by('dpo: loss (batch mean), tiny LLaMA fp64')) == 2
    for x in data['known']: assert x['why'], x                                    # every known difference is explained
