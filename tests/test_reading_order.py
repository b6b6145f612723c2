"""The package reads in chapter order, and every chapter is shaped as a lesson.

- Import graph: a module may import only modules exported by its own chapter or an earlier one (chapter order is the
  notebooks' file order in nbs/), anywhere in the module — at the top or inside a function.
- Lesson shape: every chapter opens with what you will learn and ends with a summary and exercises, and no code cell
  is longer than `MAX_CELL_LINES` lines (a class is built up across cells with prose between them)."""
import ast, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT/'coati_nb'
NBS = ROOT/'nbs'
CHAPTERS = sorted(p.name for p in NBS.glob('[0-9]*.ipynb'))
MAX_CELL_LINES = 45
# The one deliberate exception, and why: PPOTrainer keeps ColossalChat's constructor (its public names), whose
# signature alone is 38 documented parameters; splitting the signature would hide the documentation nbdev shows.
LONG_CELLS = {('11_ppo.ipynb', 'b7c0f68b')}
_SOURCE = re.compile(r'File to edit: [./]*nbs/([^\s]+\.ipynb)')


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix('')
    return '.'.join(rel.parts)


def _chapter_of() -> dict:
    "Module name → the notebook it is exported from."
    out = {}
    for path in PKG.rglob('*.py'):
        m = _SOURCE.search(path.read_text(encoding='utf-8')[:2000])
        if m: out[_module_name(path)] = m.group(1)
    return out


def _imports(path: Path) -> set:
    "The coati_nb modules a file imports, anywhere in it."
    pkg = _module_name(path).rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split('.')[:len(pkg.split('.')) - node.level + 1]
                name = '.'.join(base + ([node.module] if node.module else []))
            else: name = node.module or ''
            if name.startswith('coati_nb'):
                found.add(name)
                found.update(f'{name}.{a.name}' for a in node.names)   # `from . import x` names a module
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith('coati_nb'))
    return found


def test_every_exported_module_knows_its_chapter():
    chapters = _chapter_of()
    assert chapters, "no generated module found"
    assert set(chapters.values()) <= set(CHAPTERS), set(chapters.values()) - set(CHAPTERS)


def test_no_module_imports_a_later_chapter():
    chapters = _chapter_of()
    order = {nb: i for i, nb in enumerate(CHAPTERS)}
    late = []
    for path in PKG.rglob('*.py'):
        me = _module_name(path)
        if me not in chapters: continue
        for dep in _imports(path):
            if dep in chapters and order[chapters[dep]] > order[chapters[me]]:
                late.append(f"{me} ({chapters[me]}) imports {dep} ({chapters[dep]})")
    assert not late, "modules importing a later chapter:\n" + "\n".join(sorted(late))


def _cells(nb: str) -> list:
    return json.loads((NBS/nb).read_text(encoding='utf-8'))['cells']


@pytest.mark.parametrize('nb', CHAPTERS)
def test_chapter_is_a_lesson(nb):
    cells = _cells(nb)
    text = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    for mark in ('你将学到', '小结', '练习'):
        assert mark in text, f"{nb}: no '{mark}' section (what you will learn / summary / exercises)"
    long = [(c.get('id'), len(''.join(c['source']).splitlines())) for c in cells if c['cell_type'] == 'code']
    long = [(i, n) for i, n in long if n > MAX_CELL_LINES and (nb, i) not in LONG_CELLS]
    assert not long, f"{nb}: code cells over {MAX_CELL_LINES} lines (cell id, lines): {long}"
