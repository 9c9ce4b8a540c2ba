"""``--resume``: which file it names, what the file is (a full training checkpoint → exact continuation; a bare
ssd.pytorch state_dict → weights only), whether its architecture fits this run, and restoring the optimiser,
schedule and loss-scaler state."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from utils.errors import UserError
from utils.loading.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from utils.loading.config import ModelConfig
from utils.training.checkpoints import latest_checkpoint


def resolve_resume_path(path: str, save_folder: str, size: int, dataset: str) -> str:
    """``latest`` → the newest checkpoint in ``save_folder``; a ``*_latest.txt`` pointer → the file it names."""
    if path == "latest":
        found = latest_checkpoint(save_folder, size, dataset)
        if found is None:
            raise UserError(f"--resume latest: no ssd{size}_{dataset}_*.pth checkpoint in {save_folder} — "
                            "check --save_folder / --size / --dataset, or start without --resume")
        return found
    if path.endswith(".txt") and os.path.isfile(path):  # a *_latest.txt pointer
        with open(path, encoding="utf-8") as fh:
            name = fh.read().strip()
        return os.path.join(os.path.dirname(path), name)
    return path


@dataclass
class ResumeSource:
    """What --resume names: its path and loaded content; ``full`` for this script's training checkpoints
    (exact continuation), False for bare state_dicts (weights only)."""

    path: str
    checkpoint: Any

    def __post_init__(self) -> None:
        obj = self.checkpoint
        self.full = isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT and "optimizer" in obj

    @classmethod
    def open(cls, path: str) -> "ResumeSource":
        return cls(path, read_checkpoint(path))

    @property
    def config(self) -> Optional[Mapping[str, Any]]:
        """The run settings stored in a full checkpoint (None for bare files)."""
        if self.full and isinstance(self.checkpoint.get("config"), Mapping):
            return self.checkpoint["config"]
        return None


def check_resume_architecture(found: ModelConfig, wanted: ModelConfig, path: str) -> None:
    """Name the mismatch (input size, class count or stem) before a strict load lists tensor shapes.

    ``found``: the checkpoint's configuration (:meth:`ModelConfig.from_state`); ``wanted``: this run's.
    """
    if found.size != wanted.size:
        raise UserError(f"checkpoint {path} is an SSD{found.size}, but this run trains an SSD{wanted.size} — pass "
                        f"--size {found.size} or resume from an SSD{wanted.size} checkpoint")
    if found.num_classes != wanted.num_classes:
        raise UserError(f"checkpoint {path} has {found.num_classes} classes (with background) but the dataset "
                        f"has {wanted.num_classes} — resume with the dataset it was trained on, or start a new run")
    if found.stem != wanted.stem:
        raise UserError(f"checkpoint {path} has the {found.stem} stem, but this run trains the {wanted.stem} stem "
                        f"— pass --stem {found.stem}")


def restore_training_state(ckpt: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                           scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                           path: str) -> None:
    """Load the optimiser, scheduler and (when in use) loss-scaler state of a full checkpoint."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"the optimizer state in {path} does not fit this run ({exc}) — resume with the same "
                        "--optimizer, or pass the file as weights only by re-saving its 'model' entry") from None
    if ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
