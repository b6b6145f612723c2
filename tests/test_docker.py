"""Docker cannot run on this machine, so the Dockerfiles are checked statically: everything they COPY exists,
and they run the README's commands (`make demo` by default, `make test` on request) through the Makefile."""
import re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((ROOT/'docker').glob('Dockerfile*'))


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r'\\\n', ' ', path.read_text())
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if ' ' in l.strip() else '')
            for l in text.splitlines() if l.strip() and not l.lstrip().startswith('#')]


def test_there_is_a_cpu_and_a_gpu_image():
    assert {p.name for p in DOCKERFILES} >= {'Dockerfile', 'Dockerfile.cpu'}
    assert 'colossalai' in (ROOT/'docker'/'Dockerfile').read_text()


@pytest.mark.parametrize('path', DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_copies_what_exists_and_runs_the_readme_commands(path):
    ins = _instructions(path)
    for op, arg in ins:
        if op == 'COPY':
            *srcs, _dest = arg.split()
            for s in srcs: assert (ROOT/s).exists(), f"{path.name}: COPY {s} does not exist"
    assert ('CMD', '["make", "demo"]') in ins, f"{path.name} must run the README's main command"
    assert any(op == 'RUN' and 'make install' in arg for op, arg in ins), f"{path.name} must install through the Makefile"
    readme = (ROOT/'README.md').read_text()
    assert 'make demo' in readme and 'make test' in readme
    # `make install` is the set-up both README commands share
    assert re.search(r'^install:', (ROOT/'Makefile').read_text(), re.M)
