"""Find and import ColossalChat's own source (the oracle of the parity tests and the notebooks' side-by-side cells).

The folder is named by COATI_NB_REFERENCE (a relative value is taken from the project root); unset, it is
../shared/reference/colossalchat-2023-06. It is ColossalChat's `applications/Chat` at commit d4fb7bf (2023-06-15).
On a CPU it imports with loralib==0.1.2 and the two-line stand-in for `colossalai.logging` in tests/_stubs.
Missing outside CI: `reference_dir()` returns None (the caller skips and says how to get it). Missing under CI: an error.
"""
import importlib, os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = Path(__file__).resolve().parent / '_stubs'
HOW_TO_GET = ("ColossalChat's source is not beside the project: clone hpcaitech/ColossalAI, check out commit d4fb7bf "
              "(2023-06-15), and point COATI_NB_REFERENCE at its applications/Chat folder; `pip install loralib==0.1.2`.")


def reference_dir(env=None) -> Path | None:
    "The reference folder, or None when it is missing outside CI; raises when CI is set and it is missing."
    env = os.environ if env is None else env
    value = env.get('COATI_NB_REFERENCE')
    path = Path(value) if value else ROOT.parent / 'shared' / 'reference' / 'colossalchat-2023-06'
    if not path.is_absolute(): path = ROOT / path
    if (path / 'coati' / '__init__.py').is_file(): return path
    if env.get('CI'): raise FileNotFoundError(f"CI is set but the ColossalChat reference is missing at {path}. {HOW_TO_GET}")
    return None


def import_coati(env=None):
    "Put the reference and the colossalai stand-in on sys.path and import `coati`; None when the reference is missing."
    path = reference_dir(env)
    if path is None: return None
    try: import loralib  # noqa: F401  ColossalChat's LoRA base
    except ImportError as e:
        if (env or os.environ).get('CI'): raise
        print(f"loralib is not installed: {e}. {HOW_TO_GET}"); return None
    for p in (str(path), str(STUBS)):          # STUBS ends up first, ahead of any installed colossalai
        if p in sys.path: sys.path.remove(p)
        sys.path.insert(0, p)
    import coati
    if not str(Path(coati.__file__).resolve()).startswith(str(path.resolve())):
        raise ImportError(f"`coati` was imported from {coati.__file__}, not from the reference at {path}")
    return coati


def ref(module: str):
    "Import a module of the reference by name, e.g. ref('coati.models.loss')."
    return importlib.import_module(module)
