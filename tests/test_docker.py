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
    assert 'make colossalai' in (ROOT/'docker'/'Dockerfile').read_text()


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


def _makefile_targets() -> set:
    return set(re.findall(r'^([A-Za-z][\w-]*):', (ROOT/'Makefile').read_text(), re.M))


@pytest.mark.parametrize('path', DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_make_commands_are_makefile_targets(path):
    targets = _makefile_targets()
    ins = _instructions(path)
    used = [t for op, arg in ins if op in ('RUN', 'CMD')
            for t in re.findall(r'(?:^|&&|;|\[)\s*"?make"?,?\s+"?([A-Za-z][\w-]*)', arg)]
    assert used, f"{path.name} runs no make target"
    missing = [t for t in used if t not in targets]
    assert not missing, f"{path.name} runs make targets the Makefile does not have: {missing}"


def _base_images(path: Path) -> list:
    ins = _instructions(path)
    args = dict(a.split('=', 1) for op, a in ins if op == 'ARG' and '=' in a)
    bases = []
    for op, arg in ins:
        if op == 'FROM':
            img = arg.split()[0]
            m = re.fullmatch(r'\$\{?(\w+)\}?', img)
            bases.append(args.get(m.group(1), img) if m else img)
    return bases


@pytest.mark.parametrize('path', DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_base_images_are_pinned(path):
    for img in _base_images(path):
        assert '@sha256:' in img or ':' in img, f"{path.name}: base image {img!r} has no tag"
        tag = img.split('@')[0].rsplit(':', 1)[-1]
        assert tag != 'latest' and re.search(r'\d+\.\d+', tag), \
            f"{path.name}: base image {img!r} is not pinned to a release (a tag with a version number)"


def test_dockerignore_keeps_host_state_out_of_the_image():
    ignore = (ROOT/'.dockerignore').read_text().split()
    for entry in ('.venv', 'runs', '**/__pycache__', '*.egg-info', '.git'):
        assert entry in ignore, f".dockerignore must exclude {entry}"
    # the install stamp lives in .venv: copied in, it would make `make install` skip the install
    assert '.coati_nb-installed' in (ROOT/'Makefile').read_text()
