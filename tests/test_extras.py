"""Each optional extra installs what it promises, checked the way a new user meets it: a fresh virtual environment,
`pip install .[extra]` (torch first, the same release as this one, so the CPU wheel is reused), `pip check`, and then
the feature itself runs — or, where it cannot run on this machine, gives its one-line message.

- `quant`: `coati_nb_chat MODEL --precision int8` answers (bitsandbytes, and accelerate for transformers' device map);
- `serve`: `coati_nb_serve MODEL` starts and answers `/health`;
- `dev`: the test tools import and `nbdev_test` starts;
- colossalai (`make colossalai`, not a pip extra: colossalai pins torch <= 2.5.1): it imports, `pip check` complains
  only about colossalai's own pins, and a ColossalAI strategy on a machine without CUDA is refused in one line.
These tests install from the package index, so they are slow (about a minute each)."""
import os, shutil, subprocess, threading
from pathlib import Path
import pytest, torch
from _venv import make_venv, run as _run

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def src(tmp_path_factory):
    "The working tree as it is, without the venv and run outputs (what `pip install .` sees in a fresh clone)."
    d = tmp_path_factory.mktemp('src')/'coati_nb'
    shutil.copytree(ROOT, d, ignore=shutil.ignore_patterns('.venv', '.git', 'runs', '__pycache__', '.sync', '*.egg-info',
                                                            'build', '.pytest_cache', '.hypothesis'))
    return d


def _venv(where: Path, src: Path, extra: str|None) -> Path:
    return make_venv(where, f"{src}[{extra}]" if extra else str(src))


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    from coati_nb.inference import tiny_chat_model
    d = tmp_path_factory.mktemp('model')
    model, tok = tiny_chat_model(max_positions=256)
    model.save_pretrained(d); tok.save_pretrained(d)
    return d


def _env():
    return {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore'}


def test_quant_extra_runs_int8_chat(tmp_path, src, model_dir):
    venv = _venv(tmp_path, src, 'quant')
    _run(venv/'bin'/'python', '-m', 'pip', 'check')
    out = _run(venv/'bin'/'coati_nb_chat', model_dir, '--precision', 'int8', '--max_new_tokens', '3', '--seed', '0',
               input='hello\n', env=_env(), timeout=600)
    assert out.stdout.strip(), f"no answer from the int8 model:\n{out.stderr[-2000:]}"


def test_serve_extra_starts_the_server(tmp_path, src, model_dir):
    import httpx
    venv = _venv(tmp_path, src, 'serve')
    _run(venv/'bin'/'python', '-m', 'pip', 'check')
    proc = subprocess.Popen([str(venv/'bin'/'coati_nb_serve'), str(model_dir), '--port', '0'], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    guard = threading.Timer(900, proc.kill); guard.start()    # only against a hang: the wait is for the server's line
    try:
        seen, url = [], None
        for line in proc.stdout:             # wait for the server's own "coati_nb_serve: serving ... on URL" line
            seen.append(line)
            if 'serving' in line and ' on http' in line: url = line.split(' on ')[-1].strip(); break
        assert url, 'the server exited before it started:\n' + ''.join(seen[-40:])
        r = httpx.get(f'{url}/health', timeout=60)
        assert r.status_code == 200 and r.json().get('status') == 'ok', r.text
    finally:
        guard.cancel(); proc.terminate()
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()


def test_dev_extra_has_the_test_tools(tmp_path, src):
    venv = _venv(tmp_path, src, 'dev')
    _run(venv/'bin'/'python', '-m', 'pip', 'check')
    _run(venv/'bin'/'python', '-c', 'import pytest, hypothesis, peft, nbdev, nbclient, ipywidgets, playwright, loralib')
    assert 'usage' in _run(venv/'bin'/'nbdev_test', '--help').stdout


def test_make_colossalai_installs_it_without_its_pins(tmp_path, src):
    venv = _venv(tmp_path, src, None)
    # the venv already holds coati_nb: tell make so (its install stamp) and install colossalai into it
    (venv/'.coati_nb-installed').touch()
    _run('make', '-C', src, 'colossalai', f'VENV={venv}', env={**_env(), 'MAKEFLAGS': ''}, timeout=1200)
    ver = _run(venv/'bin'/'python', '-c', 'import colossalai, torch; print(colossalai.__version__, torch.__version__)',
               env=_env()).stdout.split()
    assert ver[0] == '0.5.0' and ver[1] == torch.__version__, ver        # torch was not replaced
    check = _run(venv/'bin'/'python', '-m', 'pip', 'check', check=False)
    complaints = [l for l in check.stdout.splitlines() if l.strip()]
    assert complaints and all(l.startswith('colossalai ') for l in complaints), check.stdout
    out = _run(venv/'bin'/'coati_nb_train_sft', '--strategy', 'colossalai_zero2', '--max_epochs', '1', check=False,
               env=_env(), timeout=600)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and err and err[-1].startswith('coati_nb_train_sft: error:') and 'CUDA' in err[-1], out.stderr
