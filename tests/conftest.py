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


# ---------------------------------------------------------------------------------------------------------------
# shared fixtures: a tiny synthetic dataset and tiny checkpoints of every model variant the CLIs offer
# ---------------------------------------------------------------------------------------------------------------

TINY_CLASSES = ["circle", "square", "triangle", "star", "ring"]  # the synthetic generator's classes


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 6-image synthetic VOC-layout dataset (labels.txt, trainval/test splits); read-only for tests."""
    from data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny_dataset") / "data"
    generate_dataset(str(root), 6, seed=0)
    return root


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """Factory: ``make_checkpoint(width=0.125, batch_norm=False, stem="vgg", size=300, class_names=TINY_CLASSES,
    seed=0, prior_config="VOC", bare=False) -> path`` of a seeded random-weight checkpoint in this project's format
    (``bare=True``: a plain state_dict, as ssd.pytorch files are). Cached per argument set for the session."""
    import torch

    from utils.loading.checkpoint import save_checkpoint
    from utils.loading.config import ModelConfig

    folder = tmp_path_factory.mktemp("checkpoints")
    cache = {}

    def make(width=0.125, batch_norm=False, stem="vgg", size=300, class_names=tuple(TINY_CLASSES), seed=0,
             prior_config="VOC", bare=False):
        key = (width, batch_norm, stem, size, tuple(class_names), seed, prior_config, bare)
        if key not in cache:
            torch.manual_seed(seed)
            config = ModelConfig(size, len(class_names) + 1, width, batch_norm, stem, prior_config)
            model = config.build("train")
            path = folder / f"tiny_{len(cache)}.pth"
            obj = model.state_dict() if bare else {"model": model.state_dict(), "class_names": list(class_names),
                                                   "config": config.to_dict()}
            save_checkpoint(obj, str(path))
            cache[key] = str(path)
        return cache[key]

    return make
