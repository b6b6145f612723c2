"""Every notebook runs top to bottom in a real Jupyter kernel (ipykernel through nbclient), as JupyterLab would.

Cells that never run under tests (`#| eval: false`, e.g. a `torchrun` launch) are skipped here too, and `#| gpu`
cells are skipped when there is no CUDA device; everything else runs, including `#| slow` cells."""
import re
from pathlib import Path
import nbformat, pytest, torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
_EVAL_FALSE = re.compile(r'^\s*#\|\s*eval:\s*false', re.M)
_GPU = re.compile(r'^\s*#\|\s*gpu\b', re.M)


def _runnable(src: str) -> bool:
    if _EVAL_FALSE.search(src): return False
    if _GPU.search(src) and not torch.cuda.is_available(): return False
    return True


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_a_kernel(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == 'code' and not _runnable(cell.source):
            cell.source = '# (skipped: eval: false / gpu)'
    client = NotebookClient(nb, timeout=1200, kernel_name='python3',
                            resources={'metadata': {'path': str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.output_type == 'error']
    assert not errors
