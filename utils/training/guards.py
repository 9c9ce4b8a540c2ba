"""What keeps a run safe: skipping non-finite steps (with BatchNorm statistics rolled back) and stopping after too
many in a row; SIGINT / SIGTERM turned into a clean stop."""
from __future__ import annotations

import contextlib
import signal
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from utils.errors import UserError


class NonFiniteLossError(UserError):
    """Raised after ``patience`` non-finite losses in a row."""


class NonFiniteGuard:
    """Counts skipped (non-finite) steps; raises :class:`NonFiniteLossError` after ``patience`` in a row."""

    def __init__(self, patience: int = 5) -> None:
        self.patience = patience
        self.total = 0
        self.in_a_row = 0

    def update(self, finite: bool, iteration: int, hint: str = "") -> None:
        if finite:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.patience:
            first = iteration - self.in_a_row + 1
            raise NonFiniteLossError(
                f"training stopped: the loss was NaN/inf for {self.in_a_row} iterations in a row "
                f"({first}..{iteration}; those steps were skipped){hint} — lower --lr, raise --warmup, set "
                "--grad_clip, or check the annotations for broken boxes")


class BatchNormRollback:
    """BatchNorm running statistics move in the forward pass, before the loss is known to be finite: snapshot
    them before each step (:meth:`snapshot`) and put them back when the step is skipped (:meth:`restore`)."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers: List[torch.Tensor] = [
            b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        self._saved: List[torch.Tensor] = []

    def snapshot(self) -> None:
        self._saved = [b.clone() for b in self.buffers]

    def restore(self) -> None:
        with torch.no_grad():
            for b, saved in zip(self.buffers, self._saved):
                b.copy_(saved)


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag the loop polls, so it can save a checkpoint and exit cleanly.

    A second SIGINT while the flag is set restores the default handler and raises KeyboardInterrupt (the user
    insists). Use as a context manager; the previous handlers are restored on exit. Only the main thread can
    install handlers; elsewhere this is an inert flag.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        with contextlib.suppress(ValueError):  # not the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
