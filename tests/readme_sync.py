"""Keep README.md and nbs/index.ipynb in step (Quarto is not available, so README.md is written from index.ipynb).
Usage: python tests/readme_sync.py [--check]   (writes README.md from index.ipynb; --check only compares)."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def index_markdown(nb_path=ROOT/'nbs'/'index.ipynb') -> str:
    "The README text held by index.ipynb: its markdown cells, in order, separated by blank lines."
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    cells = [''.join(c['source']).strip('\n') for c in nb['cells'] if c['cell_type'] == 'markdown']
    return '\n\n'.join(cells) + '\n'

if __name__ == '__main__':
    text, readme = index_markdown(), ROOT/'README.md'
    if '--check' in sys.argv[1:]:
        if readme.read_text(encoding='utf-8') != text: sys.exit('README.md differs from nbs/index.ipynb: run make readme')
        print('README.md matches nbs/index.ipynb')
    else:
        readme.write_text(text, encoding='utf-8'); print('wrote README.md from nbs/index.ipynb')
