"""`make docs` (tools/build_docs.py): the notebooks executed and rendered to a static site, and the demo's plots for
the README. Only a few notebooks are built here (one real chapter and two tiny ones written by the test): building
every chapter is `make docs`, and tests/test_notebooks_kernel.py already runs each in a kernel."""
import re, subprocess, sys, zlib, struct
from pathlib import Path
import nbformat, pytest
from nbformat.v4 import new_code_cell as code, new_markdown_cell as md, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'tools'))
import build_docs as bd


def _nb(path: Path, *cells):
    nb = new_notebook(cells=list(cells))
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "Two tiny chapters (a printed number, a table, a plot, a hidden cell, an eval: false cell), built once."
    d = tmp_path_factory.mktemp('docs'); nbs = d/'nbs'; nbs.mkdir()
    _nb(nbs/'01_first.ipynb',
        md('# 第一章 First\n> the subtitle'),
        md('## 你将学到 What you will learn\n\n- 怎样打印 `answer`，以及\n  为什么是 **42**；\n  how to print it.\n- 第二条'),
        code('#| hide\nHIDDEN_MARK = 7\nprint("hidden-cell-output")'),
        code('#| export\nanswer = 6 * 7\nprint(f"the answer is {answer}")'),
        code('import pandas as pd\npd.DataFrame({"rank": [1, 2], "loss": [0.5, 0.25]})'),
        code('%matplotlib inline\nimport matplotlib; import matplotlib.pyplot as plt\n'
             'plt.figure(figsize=(2, 1.5), dpi=50); plt.plot([0, 1, 2], [1, 0, 1]); plt.show()'),
        code('#| eval: false\nraise SystemExit("a launch that never runs under tests")'))
    _nb(nbs/'02_second.ipynb', md('# 第二章 Second'), code('print(HIDDEN_MARK if "HIDDEN_MARK" in dir() else "fresh kernel")'))
    out = d/'site'
    pages = bd.build_site(None, out, nbs, log=lambda *a: None)
    return nbs, out, pages


def test_pages_hold_the_executed_outputs(tiny):
    nbs, out, pages = tiny
    test = [p.name for p in pages]
    assert test == ['01_first.html', '02_second.html'], test
    first = (out/'01_first.html').read_text(encoding='utf-8')
    assert 'the answer is 42' in first                                   # a printed number
    assert re.search(r'<table[^>]*>.*<th>loss</th>.*0\.25', first, re.S)   # a table (pandas' HTML output)
    assert re.search(r'<img [^>]*src="data:image/png;base64,', first)      # the plot, embedded
    assert 'a launch that never runs under tests' in first and 'not run when the docs are built' in first
    assert 'hidden-cell-output' not in first and 'HIDDEN_MARK' not in first   # `#| hide` cells are left out
    assert '#|' not in first                                              # directive lines are dropped
    assert '<link rel="stylesheet" href="style.css">' in first and (out/'style.css').stat().st_size > 0
    assert 'fresh kernel' in (out/'02_second.html').read_text(encoding='utf-8')   # each notebook has its own kernel


def test_index_lists_title_and_what_you_learn(tiny):
    nbs, out, _ = tiny
    index = (out/'index.html').read_text(encoding='utf-8')
    assert re.findall(r'<a href="([^"]+)">', index) == ['01_first.html', '02_second.html']
    assert '第一章 First' in index and '第二章 Second' in index
    assert '怎样打印 <code>answer</code>，以及为什么是 <strong>42</strong>；' in index   # the Chinese half of the first bullet
    assert 'how to print it' not in index and '第二条' not in index


def test_index_links_every_notebook_in_file_order():
    index = bd.index_page(bd.notebooks())
    links = re.findall(r'<li><a href="([^"]+)">', index)
    names = sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
    assert links == [bd.page_name(Path(n)) for n in names], links
    assert 'home.html' in links and 'index.html' not in links   # nbs/index.ipynb does not overwrite the chapter list


def test_a_real_chapter(tmp_path):
    "00_utils, executed and rendered: its title, its printed tensors, no error output."
    pages = bd.build_site([ROOT/'nbs'/'00_utils.ipynb'], tmp_path, log=lambda *a: None)
    test = pages[0].read_text(encoding='utf-8')
    assert pages == [tmp_path/'00_utils.html']
    assert '<title>工具函数 Utilities</title>' in test
    results = re.findall(r'output_execute_result">\s*<pre>(.*?)</pre>', test, re.S)
    assert any(re.search(r'tensor\(\[[\d.,\s-]+\]\)', r) for r in results), results[:3]
    assert 'output_error' not in test and 'Traceback' not in test


def test_a_failing_cell_fails_the_build_naming_notebook_and_cell(tmp_path):
    nbs = tmp_path/'nbs'; nbs.mkdir()
    _nb(nbs/'01_ok.ipynb', md('# OK'), code('print(1)'))
    bad = _nb(nbs/'02_bad.ipynb', md('# Bad'), code('x = 1'), code('y = x / 0'))
    _nb(nbs/'03_after.ipynb', md('# After'), code('print(3)'))
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'build_docs.py'), 'site', '--nbs', str(nbs),
                        '--out', str(tmp_path/'site')], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    cell_id = nbformat.read(bad, as_version=4).cells[2].id
    assert err.startswith('build_docs: error: ') and '02_bad.ipynb: cell 2' in err and cell_id in err, err
    assert 'ZeroDivisionError' in err and '`y = x / 0`' in err, err
    assert (tmp_path/'site'/'01_ok.html').exists() and not (tmp_path/'site'/'02_bad.html').exists()
    assert (tmp_path/'site'/'03_after.html').exists()                  # the chapters after a failure are still built


def _png(path: Path, pad: int = 0) -> Path:
    "A valid 1x1 PNG, with `pad` bytes in an ancillary chunk to make it as large as wanted."
    def chunk(kind, data): return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    body = (chunk(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 8, 0, 0, 0, 0)) + (chunk(b'teXt', b'c\0' + b'x' * pad) if pad else b'')
            + chunk(b'IDAT', zlib.compress(b'\0\0')) + chunk(b'IEND', b''))
    path.parent.mkdir(parents=True, exist_ok=True); path.write_bytes(b'\x89PNG\r\n\x1a\n' + body)
    return path


def test_docs_images_copies_small_plots(tmp_path):
    _png(tmp_path/'demo'/'plots'/'ppo.png'); _png(tmp_path/'demo'/'plots'/'rm_accuracy.png', pad=1000)
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'build_docs.py'), 'images', str(tmp_path/'demo'),
                        '--dest', str(tmp_path/'images')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path/'images').iterdir()) == ['ppo.png', 'rm_accuracy.png']
    assert (tmp_path/'images'/'rm_accuracy.png').read_bytes() == (tmp_path/'demo'/'plots'/'rm_accuracy.png').read_bytes()


def test_docs_images_refuses_a_large_png(tmp_path):
    _png(tmp_path/'demo'/'plots'/'a_small.png'); _png(tmp_path/'demo'/'plots'/'huge.png', pad=3000)
    with pytest.raises(bd.DocsError, match=r'huge\.png is 3 KiB — over the 2 KiB limit'):
        bd.copy_images(tmp_path/'demo', tmp_path/'images', max_kb=2)
    assert not (tmp_path/'images').exists() or not any((tmp_path/'images').iterdir())   # nothing copied
    with pytest.raises(bd.DocsError, match=r'no PNG plots there \(run `make demo'):
        bd.copy_images(tmp_path/'nothing', tmp_path/'images')


def test_make_targets():
    "`make docs NB=...` (or DOCS_NB=...) renders one notebook, `make docs` all; docs-images reads DEMO_OUT."
    def dry(*args): return subprocess.run(['make', '-n', *args], cwd=ROOT, capture_output=True, text=True).stdout
    assert 'tools/build_docs.py site --out _site nbs/01_lora.ipynb' in dry('docs', 'NB=nbs/01_lora.ipynb')
    assert 'tools/build_docs.py site --out _site nbs/02_loss.ipynb' in dry('docs', 'DOCS_NB=nbs/02_loss.ipynb')
    assert re.search(r'tools/build_docs\.py site --out _site\s*$', dry('docs'), re.M)          # every notebook
    assert 'tools/build_docs.py images runs/x' in dry('docs-images', 'DEMO_OUT=runs/x')
