"""Learning rate: linear warm-up, then step decay (ssd.pytorch's ``lr_steps`` / ``gamma``) or cosine.

:class:`LRSchedule` is the ``lr_lambda`` of a ``LambdaLR``, so the LR is a function of the iteration and correct
after ``--resume``.
"""
from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import dataclass, field
from typing import List

import torch


@dataclass
class LRSchedule:
    """LR multiplier for iteration ``it`` (0-based; iteration ``it`` trains with ``base_lr * self(it)``).

    * warm-up: ``it < warmup`` → linear from ``warmup_factor`` to 1 (ramps over the first ``warmup`` iterations);
    * ``kind='step'``: ``gamma ** (number of steps <= it)`` — ssd.pytorch decays when ``iteration in lr_steps``;
    * ``kind='cosine'``: ``min_factor + (1 - min_factor) * (1 + cos(pi * t)) / 2`` with
      ``t = (it - warmup) / (max_iter - warmup)`` clamped to [0, 1].

    A plain data object so that ``LambdaLR.state_dict()`` stores its fields (weights_only-safe).
    """

    kind: str = "step"
    warmup: int = 0
    warmup_factor: float = 1.0 / 3.0
    steps: List[int] = field(default_factory=list)
    gamma: float = 0.1
    max_iter: int = 1
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("step", "cosine"):
            raise ValueError(f"LR schedule must be 'step' or 'cosine', got {self.kind!r}")
        self.steps = sorted(int(s) for s in self.steps)

    @classmethod
    def from_settings(cls, s: argparse.Namespace) -> "LRSchedule":
        """The schedule of resolved train.py settings (``lr_schedule``, ``warmup``, ``lr_steps``, ...)."""
        return cls(s.lr_schedule, s.warmup, s.warmup_factor, list(s.lr_steps), s.gamma, s.max_iter)

    def __call__(self, it: int) -> float:
        factor = 1.0
        if it < self.warmup:
            factor = self.warmup_factor + (1.0 - self.warmup_factor) * it / self.warmup
        if self.kind == "step":
            return factor * self.gamma ** sum(1 for s in self.steps if it >= s)
        span = max(1, self.max_iter - self.warmup)
        t = min(1.0, max(0.0, (it - self.warmup) / span))
        return factor * (self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t)))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` driven by ``schedule``; its state (``last_epoch`` = iterations done) survives resume."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule] * len(optimizer.param_groups))


def set_scheduler_iteration(scheduler: torch.optim.lr_scheduler.LambdaLR, iteration: int) -> None:
    """Jump to ``iteration`` (for ``--start_iter``): every decay before it is applied, unlike ssd.pytorch."""
    scheduler.last_epoch = int(iteration)
    lrs = [base * fn(iteration) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports


def scheduler_step(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """``scheduler.step()`` without the warning for iterations whose optimizer step was skipped (non-finite)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
        scheduler.step()


def apply_hyperparameters(s: argparse.Namespace, optimizer: torch.optim.Optimizer,
                          scheduler: torch.optim.lr_scheduler.LambdaLR, schedule: LRSchedule) -> None:
    """After loading optimizer/scheduler state, make this run's settings win (they equal the checkpoint's unless
    flags changed them): base LR, schedule, weight decay, momentum."""
    for fn in scheduler.lr_lambdas:
        fn.__dict__.update(schedule.__dict__)
    scheduler.base_lrs = [s.lr for _ in optimizer.param_groups]
    for i, group in enumerate(optimizer.param_groups):  # group 0 decays; AdamW's group 1 (BN/bias) never does
        group["initial_lr"] = s.lr
        group["weight_decay"] = s.weight_decay if i == 0 else 0.0
        if "momentum" in group:
            group["momentum"] = s.momentum
    set_scheduler_iteration(scheduler, scheduler.last_epoch)
