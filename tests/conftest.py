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
