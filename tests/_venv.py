"""Fresh virtual environments for the tests that meet coati_nb the way a user's own install does (tests/test_extras.py,
tests/test_hf_interop.py). torch is installed first, the release this venv runs, so pip reuses the local CPU wheel and
never pulls a CUDA build; then the requirements come from the package index."""
import subprocess, sys
from pathlib import Path

import torch

TORCH = f"torch=={torch.__version__.split('+')[0]}"


def run(*cmd, check=True, **kw):
    "Run `cmd`; with `check`, a non-zero exit is an AssertionError that shows the command and the end of its output."
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def make_venv(where: Path, *requirements: str, env: dict|None = None) -> Path:
    "A new venv in `where`/venv with this torch release, then `requirements` (pip arguments); returns the venv folder."
    venv = where/'venv'
    run(sys.executable, '-m', 'venv', venv)
    pip = [venv/'bin'/'python', '-m', 'pip', 'install', '-q']
    run(*pip, TORCH, env=env)
    if requirements: run(*pip, *requirements, env=env)
    return venv
