"""A regular (non-editable) `pip install .` into a clean virtual environment imports and runs, with the bundled
data inside the package. To stay offline and fast, the new venv borrows the project's already-installed
dependencies through a .pth file and installs only coati_nb itself (`--no-deps`)."""
import shutil, subprocess, sys, sysconfig, textwrap
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def fresh_venv(tmp_path_factory):
    d = tmp_path_factory.mktemp('venv')
    venv = d/'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    py = venv/'bin'/'python'
    site = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          check=True, capture_output=True, text=True).stdout.strip()
    # dependencies come from the project's venv, coati_nb itself from the wheel we build now
    Path(site, 'borrowed_deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    build = d/'src'   # the working tree as it is (committed or not), without the venv and run outputs
    shutil.copytree(ROOT, build, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns('.venv', '.git', 'runs', '__pycache__', '.sync', '*.egg-info', 'build'))
    subprocess.run([str(py), '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', str(build)],
                   check=True, cwd=d)
    return py, d


def test_wheel_imports_and_runs(fresh_venv):
    py, d = fresh_venv
    code = textwrap.dedent('''
        import coati_nb, coati_nb.utils, coati_nb.lora, coati_nb.loss, torch
        from pathlib import Path
        assert 'site-packages' in coati_nb.__file__, coati_nb.__file__
        data = coati_nb.utils.bundled_data_path()
        assert data.is_dir() and data.name == '_data', data
        lin = coati_nb.lora.LoraLinear(torch.nn.Linear(8, 8), r=2)
        print('ok', coati_nb.__version__)
    ''')
    out = subprocess.run([str(py), '-c', code], cwd=d, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('ok')
