"""Training checkpoints: the dict (docs/DESIGN.md), file names, atomic writes, the ``*_latest.txt`` pointer and the
clean-up of temporary files left by a run killed mid-write.

Names: ``{folder}/ssd{size}_{dataset}_{tag}.pth`` (``tag`` = iteration or ``final``) and
``{folder}/ssd{size}_{dataset}_latest.txt`` holding the newest file's name.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from utils.io import atomic_write
from utils.loading.checkpoint import CHECKPOINT_FORMAT
from utils.training.rng import capture_rng_state


def make_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: Optional[torch.amp.GradScaler],
                    iteration: int, class_names: Sequence[str], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The training checkpoint (docs/DESIGN.md): everything needed to continue exactly.

    ``model`` must be the bare SSD (not the DDP wrapper): keys are ssd.pytorch's, without ``module.``. Weights
    are stored contiguous (channels_last training does not leak into the file).
    """
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "model": state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "iteration": int(iteration),
        "rng": capture_rng_state(),
        "class_names": list(class_names),
        "config": dict(config),
    }


def checkpoint_path(folder: str, size: int, dataset: str, tag: Any) -> str:
    """``{folder}/ssd{size}_{dataset}_{tag}.pth`` — tag is the iteration, or ``final``."""
    return os.path.join(folder, f"ssd{size}_{dataset}_{tag}.pth")


def latest_pointer_path(folder: str, size: int, dataset: str) -> str:
    return os.path.join(folder, f"ssd{size}_{dataset}_latest.txt")


def write_checkpoint(ckpt: Mapping[str, Any], path: str, pointer: Optional[str] = None,
                     delay: float = 0.0) -> None:
    """Save atomically (temporary file + fsync + rename); then point ``pointer`` (a text file) at it.

    A kill at any moment leaves either the previous file or the complete new one. The pointer is written the
    same way after the checkpoint, so it never names a file that is not complete. ``delay`` (seconds, a test
    hook: :class:`utils.training.hooks.TestHooks`) sleeps before the rename to widen the kill window.
    """
    with atomic_write(path, suffix=".tmp") as tmp:
        # through a Python file object: a full disk or quota then raises OSError(ENOSPC/EDQUOT) (chained to
        # torch's RuntimeError), and atomic_write names this checkpoint and the cause in one line
        with open(tmp, "wb") as fh:
            torch.save(dict(ckpt), fh)
        if delay > 0:
            time.sleep(delay)
    if pointer is not None:
        with atomic_write(pointer, suffix=".tmp") as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(os.path.basename(path) + "\n")


def latest_checkpoint(folder: str, size: int, dataset: str) -> Optional[str]:
    """The newest checkpoint of this run name in ``folder``: the pointer's target, else the highest iteration."""
    pointer = latest_pointer_path(folder, size, dataset)
    with contextlib.suppress(OSError):
        with open(pointer, encoding="utf-8") as fh:
            name = fh.read().strip()
        if name and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    pattern = re.compile(rf"^ssd{size}_{re.escape(dataset)}_(\d+)\.pth$")
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = pattern.match(name)
        if m:
            found.append((int(m.group(1)), name))
    return os.path.join(folder, max(found)[1]) if found else None


def remove_stale_temp_files(folder: str, size: int, dataset: str) -> List[str]:
    """Delete temporary files left by a run that was killed mid-write (``.ssd300_VOC_*.pth.*.tmp``)."""
    removed = []
    prefix = glob.escape(os.path.join(folder, f".ssd{size}_{dataset}_"))
    for path in glob.glob(prefix + "*.tmp"):
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(path)
    return removed


class CheckpointWriter:
    """Writes this run's checkpoints (``save(tag, iteration)``) and remembers the last one written."""

    def __init__(self, folder: str, size: int, dataset: str, config: Mapping[str, Any],
                 class_names: Sequence[str], save_delay: float = 0.0) -> None:
        self.folder, self.size, self.dataset = folder, size, dataset
        self.config = dict(config)
        self.class_names = list(class_names)
        self.save_delay = save_delay
        self.pointer = latest_pointer_path(folder, size, dataset)
        self.last_saved: Optional[tuple] = None  # (iteration, path)

    def save(self, tag: Any, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: Optional[torch.amp.GradScaler]) -> str:
        path = checkpoint_path(self.folder, self.size, self.dataset, tag)
        ckpt = make_checkpoint(model, optimizer, scheduler, scaler, iteration, self.class_names, self.config)
        write_checkpoint(ckpt, path, self.pointer, self.save_delay)
        self.last_saved = (iteration, path)
        return path

    def last_good(self) -> Optional[str]:
        """The newest checkpoint to name after a non-finite step: this run's last one, else the folder's."""
        if self.last_saved is not None:
            return self.last_saved[1]
        return latest_checkpoint(self.folder, self.size, self.dataset)
