import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU')
    config.addinivalue_line('markers', 'slow: slow but CPU-possible')


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available(): return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)')
    for item in items:
        if 'gpu' in item.keywords: item.add_marker(skip)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope='module')
def real() -> Path:
    "The real public samples beside the project (see tests/test_realdata.py); skipped outside CI when missing, an error on CI."
    from test_realdata import realdata_dir
    path = realdata_dir()
    if path is None: pytest.skip('real data folder not found (set COATI_NB_REALDATA); skipped outside CI')
    return path
