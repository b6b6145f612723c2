"""Render the notebooks to a static site a learner can read before running anything (`make docs`).

    python tools/build_docs.py site [--out _site] [NOTEBOOK ...]   # execute + render (all of nbs/ when none given)
    python tools/build_docs.py images DEMO_OUT [--dest docs/images] # copy a demo's plots for the README

`site` executes each notebook in a real kernel (nbclient, working directory nbs/, as JupyterLab would), skipping the
cells tests/test_notebooks_kernel.py skips (`#| eval: false`; `#| gpu` without CUDA), renders it with nbconvert's lean
`basic` template (images embedded as data URIs) into OUT/<name>.html, and writes OUT/index.html: the chapters in file
order, each with its title and the first line of its 「你将学到」 section. One stylesheet, OUT/style.css, serves every page.
A cell that fails stops that notebook (no page is written for it); the others are still built, then each failure is
printed as one line naming the notebook and the cell, and the exit status is 1.

`images` copies DEMO_OUT/plots/*.png into docs/images/ after checking that each is at most --max_kb KiB (the README
shows them and they are committed, so they must stay small); nothing is copied when one is too large."""
from __future__ import annotations
import argparse, html, os, re, shutil, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'
EVAL_FALSE = re.compile(r'^\s*#\|\s*eval:\s*false', re.M)   # the same rules as tests/test_notebooks_kernel.py
GPU = re.compile(r'^\s*#\|\s*gpu\b', re.M)
HIDE = re.compile(r'^\s*#\|\s*hide\s*$', re.M)
DIRECTIVE = re.compile(r'^\s*#\|.*$')
_CJK = re.compile(r'[\u4e00-\u9fff]')
MATHJAX = ('<script>window.MathJax={tex:{inlineMath:[["$","$"],["\\\\(","\\\\)"]]}};</script>\n'
           '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>')


_UMASK = os.umask(0); os.umask(_UMASK)


class DocsError(Exception):
    "A notebook that cannot be built, or a plot that cannot be copied; the message names which and where."


def notebooks(nbs: Path = NBS) -> list[Path]:
    "The notebooks of the site, in file order (chapter order); scratch notebooks (`_*.ipynb`) are left out."
    return sorted(p for p in Path(nbs).glob('*.ipynb') if not p.name.startswith('_'))


def _write(path: Path, text: str):
    "Write `text` atomically (a temp file in the same folder, then rename)."
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)                     # a web page is world-readable, unlike mkstemp's 0600
        with os.fdopen(fd, 'w', encoding='utf-8') as f: f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True); raise


def runnable(src: str, cuda: bool) -> bool:
    "Whether a code cell runs (as in tests/test_notebooks_kernel.py): not `eval: false`, not `gpu` without CUDA."
    if EVAL_FALSE.search(src): return False
    if GPU.search(src) and not cuda: return False
    return True


# ---- what the index says about each notebook -------------------------------------------------------------------

def title_and_summary(nb) -> tuple[str, str]:
    "(the notebook's `# ` title, the first line of its 「你将学到」 section — or its `> ` subtitle when it has none)."
    mds = [c.source for c in nb.cells if c.cell_type == 'markdown']
    title = next((l[2:].strip() for m in mds for l in m.splitlines() if l.startswith('# ')), '')
    for m in mds:
        if '你将学到' not in m: continue
        lines = m.splitlines()
        for k, line in enumerate(lines):
            if not line.strip().startswith(('- ', '* ', '1. ')): continue
            out = [line.strip().split(' ', 1)[1].strip()]
            for more in lines[k+1:]:                       # the Chinese half may wrap; the English half follows
                if not more.startswith(' ') or not _CJK.search(more): break
                out.append(more.strip())
            return title, ''.join(out)
    sub = ' '.join(l[1:].strip() for m in mds[:1] for l in m.splitlines() if l.startswith('>'))
    return title, sub


def _inline_md(text: str) -> str:
    "Escape `text` for HTML, with `code` spans and **bold** (MathJax handles $...$)."
    text = re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(text, quote=False))
    return re.sub(r'\*\*([^*]+)\*\*', r'<strong>\1</strong>', text)


def page_name(path: Path) -> str:
    "The HTML file of a notebook (nbs/index.ipynb becomes home.html: index.html is the chapter list)."
    return 'home.html' if path.stem == 'index' else f'{path.stem}.html'


# ---- execute ------------------------------------------------------------------------------------------------------

def execute(path: Path, timeout: int = 1200, cuda: bool | None = None):
    "Run `path` top to bottom in a fresh kernel; returns the executed notebook or raises DocsError naming the cell."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    if cuda is None:
        try: import torch; cuda = torch.cuda.is_available()
        except ImportError: cuda = False
    for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE'):   # the kernel inherits these: no hub
        os.environ.setdefault(k, '1')
    nb = nbformat.read(path, as_version=4)
    skipped = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == 'code' and not runnable(cell.source, cuda):
            skipped[i], cell.source = cell.source, '# (skipped: eval: false / gpu)'
    where = {}
    def on_start(cell=None, cell_index=None, **kw): where['i'] = cell_index
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', on_cell_start=on_start,
                            resources={'metadata': {'path': str(path.parent)}})
    try: client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        i = where.get('i')
        cell = nb.cells[i] if i is not None else None
        first = next((l for l in (cell.source if cell else '').splitlines() if l.strip() and not l.startswith('#|')), '')
        lines = [l.strip() for l in str(e).splitlines() if re.search(r'[A-Za-z]', l)]   # not the '-----' rulers
        what = (str(getattr(e, 'ename', '') or '') + ': ' + str(getattr(e, 'evalue', '') or '')).strip(': ') or \
               (lines or [type(e).__name__])[-1]
        raise DocsError(f"{_rel(path)}: cell {i} (id {cell.get('id', '?') if cell else '?'}, `{first.strip()[:60]}`) "
                        f"failed: {what}") from None
    for i, src in skipped.items():
        nb.cells[i].source = src
        nb.cells[i].outputs = [nbformat.v4.new_output('stream', name='stdout',
                               text='(not run when the docs are built: eval: false, or a GPU cell without CUDA)\n')]
    return nb


def _rel(path: Path) -> str:
    try: return str(Path(path).resolve().relative_to(ROOT))
    except ValueError: return str(path)


# ---- render -------------------------------------------------------------------------------------------------------

def for_reading(nb):
    "The notebook as a reader sees it (as nbdev's docs do): `#| hide` cells removed, `#|` directive lines dropped."
    nb.cells = [c for c in nb.cells if not (c.cell_type == 'code' and HIDE.search(c.source))]
    for c in nb.cells:
        if c.cell_type != 'code': continue
        lines = c.source.splitlines()
        while lines and DIRECTIVE.match(lines[0]): lines.pop(0)
        c.source = '\n'.join(lines)
    nb.cells = [c for c in nb.cells if c.cell_type != 'code' or c.source.strip() or c.get('outputs')]
    return nb


def _nav(path: Path, all_nbs: list[Path]) -> str:
    i = next((k for k, p in enumerate(all_nbs) if p.name == path.name), None)
    prev = f'<a href="{page_name(all_nbs[i-1])}">← {all_nbs[i-1].stem}</a>' if i else ''
    nxt = f'<a href="{page_name(all_nbs[i+1])}">{all_nbs[i+1].stem} →</a>' if i is not None and i + 1 < len(all_nbs) else ''
    return f'<nav>{prev} <a href="index.html">目录 Contents</a> {nxt}</nav>'


def page(title: str, body: str, nav: str = '') -> str:
    return (f'<!DOCTYPE html>\n<html lang="zh"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
            f'<link rel="stylesheet" href="style.css">\n{MATHJAX}\n</head><body>\n{nav}\n<main>\n{body}\n</main>\n{nav}\n</body></html>\n')


def _lean_code(body: str) -> str:
    "Drop pygments' spans whose class the stylesheet does not colour (names, punctuation, spaces): a third of a page."
    from pygments.formatters import HtmlFormatter
    css = HtmlFormatter(style='default').get_style_defs('.highlight')
    keep = set(re.findall(r'^\.highlight \.(\w+) \{', css, re.M)) - {'w'}
    span = re.compile(r'<span class="(\w+)">([^<]*)</span>')
    def lean(block): return span.sub(lambda m: m.group(0) if m.group(1) in keep else m.group(2), block.group(0))
    return re.sub(r'<div class="highlight[^"]*"><pre>.*?</pre>', lean, body, flags=re.S)


def render(nb, path: Path, all_nbs: list[Path]) -> str:
    "One executed notebook as a standalone page (lean `basic` template; output images embedded as data URIs)."
    from nbconvert import HTMLExporter
    exp = HTMLExporter(template_name='basic', exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True)
    body, _ = exp.from_notebook_node(for_reading(nb), resources={'metadata': {'path': str(path.parent)}})
    title, _ = title_and_summary(nb)
    return page(title or path.stem, _lean_code(body), _nav(path, all_nbs))


def stylesheet() -> str:
    "The one stylesheet of the site: layout plus pygments' colours for the code."
    from pygments.formatters import HtmlFormatter
    return (STYLE + HtmlFormatter(style='default').get_style_defs('.highlight') + '\n')


STYLE = """body{font:16px/1.6 system-ui,-apple-system,"Noto Sans CJK SC","PingFang SC",sans-serif;margin:0;color:#222}
main{max-width:58rem;margin:0 auto;padding:0 1rem 3rem}
nav{max-width:58rem;margin:0 auto;padding:.6rem 1rem;display:flex;justify-content:space-between;font-size:.9rem}
a{color:#0550ae}
pre,code{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.input_area{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;margin:.6rem 0 0}
.input_area pre{margin:0;padding:.5rem .7rem;overflow-x:auto}
.output_area pre{margin:0;padding:.3rem .7rem;overflow-x:auto;border-left:3px solid #d0d7de}
.output_area img{max-width:100%;height:auto}
.output_stderr pre{background:#fff5f5}
.anchor-link{visibility:hidden;margin-left:.3rem;text-decoration:none}
h1:hover .anchor-link,h2:hover .anchor-link,h3:hover .anchor-link{visibility:visible}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.2rem .5rem;text-align:left}
blockquote{color:#555;border-left:3px solid #d0d7de;margin:0;padding-left:1rem}
ol.chapters li{margin:.5rem 0}
ol.chapters .what{color:#444;display:block}
"""


def index_page(all_nbs: list[Path]) -> str:
    "The chapter list: every notebook in file order, linked, with its title and its 「你将学到」 line."
    import nbformat
    items = []
    for p in all_nbs:
        title, what = title_and_summary(nbformat.read(p, as_version=4))
        items.append(f'<li><a href="{page_name(p)}">{html.escape(title or p.stem)}</a> <small>({p.name})</small>'
                     f'<span class="what">{_inline_md(what)}</span></li>')
    body = ('<h1>coati_nb</h1>\n<p>笔记本按章节顺序，已执行、带输出；在本地运行：<code>make lab</code>。<br>\n'
            'The notebooks in chapter order, executed, with their outputs; to run them yourself: <code>make lab</code>.</p>\n'
            '<ol class="chapters">\n' + '\n'.join(items) + '\n</ol>')
    return page('coati_nb — 目录 Contents', body)


def build_site(selected: list[Path] | None = None, out: Path = ROOT/'_site', nbs: Path = NBS,
               timeout: int = 1200, log=print) -> list[Path]:
    "Execute and render `selected` (default: every notebook of `nbs`), write the index and stylesheet; the pages written."
    all_nbs = notebooks(nbs)
    selected = all_nbs if not selected else [Path(p) for p in selected]
    for p in selected:
        if not p.is_file() or p.suffix != '.ipynb': raise DocsError(f"{p}: not a notebook file")
    out = Path(out); written, failed = [], []
    _write(out/'style.css', stylesheet())
    _write(out/'index.html', index_page(all_nbs))
    for p in selected:                                  # a failure is reported at the end: the other pages still build
        t0 = time.monotonic()
        try: nb = execute(p, timeout)
        except DocsError as e:
            failed.append(str(e)); log(f"{_rel(p)}: FAILED"); (out/page_name(p)).unlink(missing_ok=True); continue
        _write(out/page_name(p), render(nb, p, all_nbs))
        written.append(out/page_name(p))
        log(f"{_rel(p)} -> {_rel(out/page_name(p))} ({(out/page_name(p)).stat().st_size // 1024} KiB, "
            f"{time.monotonic() - t0:.0f} s)")
    if failed: raise DocsError('\n'.join(failed))
    return written


# ---- the demo's plots for the README -----------------------------------------------------------------------------

def copy_images(demo_out: Path, dest: Path = ROOT/'docs'/'images', max_kb: int = 200) -> list[Path]:
    "Copy DEMO_OUT/plots/*.png into `dest` when every one is at most `max_kb` KiB; raise DocsError naming any too large."
    plots = Path(demo_out)/'plots'
    pngs = sorted(plots.glob('*.png'))
    if not pngs: raise DocsError(f"{plots}: no PNG plots there (run `make demo DEMO_OUT={demo_out}` first)")
    big = [f"{p.name} is {p.stat().st_size / 1024:.0f} KiB" for p in pngs if p.stat().st_size > max_kb * 1024]
    if big: raise DocsError(f"{plots}: {'; '.join(big)} — over the {max_kb} KiB limit for docs/images (lower the dpi)")
    bad = [p.name for p in pngs if p.read_bytes()[:8] != b'\x89PNG\r\n\x1a\n']
    if bad: raise DocsError(f"{plots}: not PNG files: {', '.join(bad)}")
    Path(dest).mkdir(parents=True, exist_ok=True); done = []
    for p in pngs:
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f'.{p.name}.', suffix='.tmp'); os.close(fd)
        shutil.copyfile(p, tmp); os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, Path(dest)/p.name); done.append(Path(dest)/p.name)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='build_docs', description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('site', help='execute the notebooks and render them to HTML')
    s.add_argument('notebooks', nargs='*', type=Path, help='notebooks to render (default: every one in nbs/)')
    s.add_argument('--out', type=Path, default=ROOT/'_site', help='output folder')
    s.add_argument('--nbs', type=Path, default=NBS, help='the notebook folder the index lists')
    s.add_argument('--timeout', type=int, default=1200, help='seconds per cell')
    i = sub.add_parser('images', help="copy a demo run's plots into docs/images")
    i.add_argument('demo_out', type=Path, help='the demo output folder (holds plots/*.png)')
    i.add_argument('--dest', type=Path, default=ROOT/'docs'/'images')
    i.add_argument('--max_kb', type=int, default=200, help='largest PNG accepted, KiB')
    a = ap.parse_args(argv)
    try:
        if a.cmd == 'site':
            t0 = time.monotonic()
            pages = build_site(a.notebooks, a.out, a.nbs, a.timeout)
            print(f"build_docs: {len(pages)} page(s) and index.html in {_rel(a.out)} in {time.monotonic() - t0:.0f} s")
        else:
            for p in copy_images(a.demo_out, a.dest, a.max_kb): print(f"build_docs: {_rel(p)} ({p.stat().st_size // 1024} KiB)")
    except DocsError as e:
        for line in str(e).splitlines(): print(f"build_docs: error: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
