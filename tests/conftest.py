"""Shared test setup: make the repo importable and keep torch on few threads (CI has 2 cores)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
