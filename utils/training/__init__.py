"""The pieces of the training loop in train.py, each small and testable on its own.

* :class:`EndlessBatchSampler` / :class:`SeededDataset` — an endless, per-epoch reshuffled stream of batches,
  sharded per rank, where every sample carries its own augmentation seed. The stream is a pure function of
  ``(seed, position)``: resuming at iteration ``k`` replays exactly what an uninterrupted run would have seen,
  independent of ``num_workers`` and of how many processes share a global batch.
* :class:`LRSchedule` — linear warm-up, then step decay (ssd.pytorch's ``lr_steps``/``gamma``) or cosine; used as
  the ``lr_lambda`` of a ``LambdaLR``, so it is a function of the iteration and correct after ``--resume``.
* :func:`param_groups` / :func:`build_optimizer` — SGD as the paper, or AdamW without weight decay on
  BatchNorm / bias / L2Norm parameters.
* :func:`multibox_loss_sums` — the MultiBox loss as *sums* plus the positive count, so that data-parallel
  ranks can normalise by the global number of positives (then 2 x batch 2 == 1 x batch 4).
* Checkpoints: :func:`make_checkpoint`, :func:`write_checkpoint` (atomic), :func:`checkpoint_path`,
  :func:`latest_checkpoint`; RNG state capture/restore as plain tensors (``torch.load(weights_only=True)``-safe).
* :class:`TrainLog` (CSV always, TensorBoard when installed), :class:`NonFiniteGuard`, :class:`StopRequest`
  (SIGINT/SIGTERM), :class:`DistInfo` / :func:`init_distributed` (torchrun).
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import glob
import math
import os
import random
import re
import signal
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as tud
from torch import nn

from utils.loading.checkpoint import CHECKPOINT_FORMAT
from utils.errors import UserError
from utils.io import atomic_write

__all__ = [
    "EndlessBatchSampler", "SeededDataset", "LRSchedule", "build_scheduler", "set_scheduler_iteration",
    "param_groups", "build_optimizer", "freeze_vgg", "FREEZE_CONVS", "multibox_loss_sums", "capture_rng_state", "restore_rng_state",
    "make_checkpoint", "write_checkpoint", "checkpoint_path", "latest_checkpoint", "remove_stale_temp_files",
    "TrainLog", "LossWindow", "format_eta", "NonFiniteGuard", "NonFiniteLossError", "StopRequest", "DistInfo",
    "init_distributed", "cleanup_distributed", "seed_everything", "scheduler_step", "latest_pointer_path",
]


# ----------------------------------------------------------------------------------------------------------
# data order
# ----------------------------------------------------------------------------------------------------------

class EndlessBatchSampler(tud.Sampler):
    """Endless batches of ``(dataset index, sample seed)`` pairs for one rank; never raises StopIteration.

    The global stream is the concatenation of per-epoch permutations of ``range(dataset_size)`` (epoch ``e`` is
    shuffled with a generator seeded from ``(seed, e)``). Global batch ``b`` is the stream positions
    ``[b * B * W, (b + 1) * B * W)`` with ``B = batch_size`` (per process) and ``W = world_size``; rank ``r``
    takes the ``r``-th slice of ``B``. So W processes x batch B see the same images, in the same order, as one
    process x batch ``B * W``. ``start_batch`` skips already-trained batches when resuming (no state needed).

    Each sample's seed is a hash of ``(seed, stream position)``: augmentations are reproducible per sample.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, shuffle: bool = True) -> None:
        if dataset_size <= 0:
            raise ValueError("dataset_size must be positive")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start_batch = int(start_batch)
        self.shuffle = shuffle
        self._epoch = -1
        self._perm: List[int] = []

    def _permutation(self, epoch: int) -> List[int]:
        if epoch != self._epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(_mix(self.seed, epoch, 0x5EED))
                self._perm = torch.randperm(self.dataset_size, generator=g).tolist()
            else:
                self._perm = list(range(self.dataset_size))
            self._epoch = epoch
        return self._perm

    def index_at(self, position: int) -> int:
        """Dataset index at a global stream position."""
        epoch, offset = divmod(position, self.dataset_size)
        return self._permutation(epoch)[offset]

    def sample_seed(self, position: int) -> int:
        return _mix(self.seed, position, 0xA46)

    def batch_positions(self, batch: int) -> range:
        start = (batch * self.world_size + self.rank) * self.batch_size
        return range(start, start + self.batch_size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batch = self.start_batch
        while True:
            yield [(self.index_at(p), self.sample_seed(p)) for p in self.batch_positions(batch)]
            batch += 1


def _mix(*values: int) -> int:
    """A well-mixed 32-bit seed from integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(1)[0])


class SeededDataset(tud.Dataset):
    """Wrap a dataset so that ``ds[(index, seed)]`` runs ``dataset[index]`` under a fixed NumPy / ``random`` seed.

    The augmentations draw from NumPy's global state (see utils/augmentations.py); seeding it per sample makes
    a sample's augmentation depend only on its stream position. The previous global states are restored, so
    in the main process (``num_workers=0``) the wrapper has no side effect.
    """

    def __init__(self, dataset: tud.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        np.random.seed(seed)
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


# ----------------------------------------------------------------------------------------------------------
# learning rate
# ----------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------
# optimizer
# ----------------------------------------------------------------------------------------------------------

def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True) -> List[Dict[str, Any]]:
    """Parameter groups in a fixed order (module registration order).

    With ``decay_norm_and_bias=False`` one-dimensional parameters — biases, BatchNorm weights and L2Norm's
    scale — go to a second group with ``weight_decay=0`` (they set scales, not features; decaying them only
    fights BatchNorm). ssd.pytorch's SGD decays every parameter (``True``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.9,
                    weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """``'sgd'``: SGD(momentum, weight decay on everything) as the paper; ``'adamw'``: AdamW, no decay on 1-D params."""
    if name == "sgd":
        return torch.optim.SGD(param_groups(model, weight_decay, True), lr=lr, momentum=momentum,
                               weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model, weight_decay, False), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


# VGG-16 convolutions per block name: conv1 = conv1_1..conv1_2, conv2 = up to conv2_2, conv3 = up to conv3_3
FREEZE_CONVS = {"none": 0, "conv1": 2, "conv2": 4, "conv3": 7}


def freeze_vgg(model: nn.Module, upto: str) -> int:
    """Fix the first VGG blocks (``requires_grad=False``: no weight update, and no backward pass below them).

    The original Caffe SSD froze ``conv1_1 .. conv2_2`` when fine-tuning from ImageNet VGG-16 (``upto='conv2'``):
    those layers learn generic edges, and they are the most expensive ones (full and half resolution), so
    skipping their backward makes a step ~1.5x cheaper. Returns the number of frozen parameters.
    """
    if upto not in FREEZE_CONVS:
        raise ValueError(f"freeze must be one of {sorted(FREEZE_CONVS)}, got {upto!r}")
    limit = FREEZE_CONVS[upto]
    frozen = 0
    convs = 0
    for layer in model.vgg:
        if isinstance(layer, nn.Conv2d):
            convs += 1
        if convs > limit:
            break
        for p in layer.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


# ----------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------

def multibox_loss_sums(criterion: nn.Module, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor,
                       targets: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss_l_sum, loss_c_sum, num_pos)`` of a :class:`layers.MultiBoxLoss` on this batch (float32 scalars).

    ``MultiBoxLoss`` returns the two terms divided by ``N = max(1, num_pos)``; multiplying back gives sums that
    can be added across ranks and divided by the global ``N``. Matching runs batched on ``loc``'s device.
    """
    from layers.matching import match_targets

    priors = priors[: loc.shape[1]].to(device=loc.device, dtype=torch.float32)
    with torch.no_grad():
        loc_t, conf_t = match_targets(list(targets), priors, criterion.variance, criterion.threshold)
    loss_l, loss_c = criterion.loss_from_targets(loc, conf, loc_t, conf_t)
    num_pos = (conf_t > 0).sum().to(torch.float32)
    n = num_pos.clamp(min=1.0)
    return loss_l.float() * n, loss_c.float() * n, num_pos


# ----------------------------------------------------------------------------------------------------------
# RNG state (stored as plain tensors / numbers so that torch.load(weights_only=True) reads it)
# ----------------------------------------------------------------------------------------------------------

def capture_rng_state() -> Dict[str, Any]:
    """torch (CPU and CUDA), NumPy's global and Python's ``random`` states as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (missing parts are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["kind"], np.asarray(s["keys"], dtype=np.int64).astype(np.uint32), int(s["pos"]),
                             int(s["has_gauss"]), float(s["cached_gaussian"])))
    if "python" in state:
        s = state["python"]
        random.setstate((int(s["version"]), tuple(int(v) for v in s["state"].tolist()), s["gauss_next"]))


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy's global state and ``random`` (model init and anything outside the data stream)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------

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


def write_checkpoint(ckpt: Mapping[str, Any], path: str, pointer: Optional[str] = None) -> None:
    """Save atomically (temporary file + fsync + rename); then point ``pointer`` (a text file) at it.

    A kill at any moment leaves either the previous file or the complete new one. The pointer is written the
    same way after the checkpoint, so it never names a file that is not complete.
    """
    delay = float(os.environ.get("SSD_TEST_SAVE_DELAY", "0") or 0)  # test hook: widen the kill window
    with atomic_write(path, suffix=".tmp") as tmp:
        torch.save(dict(ckpt), tmp)
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


# ----------------------------------------------------------------------------------------------------------
# logging
# ----------------------------------------------------------------------------------------------------------

class TrainLog:
    """CSV log (always) plus TensorBoard events (when ``tensorboard`` is installed).

    ``resume_at``: rows with an iteration beyond it (written by a run that went further before being killed)
    are dropped, so the file reads as one continuous run.
    """

    def __init__(self, csv_path: str, fields: Sequence[str], tensorboard_dir: Optional[str] = None,
                 resume_at: Optional[int] = None) -> None:
        self.path = csv_path
        self.fields = list(fields)
        rows: List[Dict[str, str]] = []
        if resume_at is not None and os.path.isfile(csv_path):
            with open(csv_path, newline="", encoding="utf-8") as fh:
                # keep complete rows up to the resume point (a kill can leave a half-written last line)
                rows = [r for r in csv.DictReader(fh) if None not in r and None not in r.values()
                        and 0 <= _int_or(r.get("iteration"), -1) <= resume_at]
        os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
        with atomic_write(csv_path, suffix=".tmp") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self.fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        self._fh = open(csv_path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, self.fields, extrasaction="ignore")
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(tensorboard_dir, purge_step=resume_at)

    def log(self, row: Mapping[str, Any], tb_prefix: str = "train") -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._fh.flush()
        if self.tb is not None:
            step = int(row["iteration"])
            for k, v in row.items():
                if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{tb_prefix}/{k}", v, step)

    def close(self) -> None:
        self._fh.close()
        if self.tb is not None:
            self.tb.close()


class LossWindow:
    """Mean finite losses and time per iteration since the last log line (one row per ``--log_every``)."""

    def __init__(self) -> None:
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.t0 = now
        self.loss_l = self.loss_c = 0.0
        self.finite = 0
        self.iterations = 0

    def add(self, loss_l: float, loss_c: float, finite: bool) -> None:
        self.iterations += 1
        if finite:
            self.loss_l += loss_l
            self.loss_c += loss_c
            self.finite += 1

    def row(self, iteration: int, lr: float, images_per_iteration: int, skipped: int,
            elapsed: float) -> Dict[str, Any]:
        """The log row (NaN losses when every step of the window was skipped); starts a new window."""
        now = time.perf_counter()
        per_iter = (now - self.t0) / max(1, self.iterations)
        n = self.finite
        nan = float("nan")
        row = {"iteration": iteration, "loss": (self.loss_l + self.loss_c) / n if n else nan,
               "loss_l": self.loss_l / n if n else nan, "loss_c": self.loss_c / n if n else nan, "lr": lr,
               "images_per_s": images_per_iteration / per_iter if per_iter > 0 else nan, "skipped": skipped,
               "elapsed_s": elapsed, "seconds_per_iteration": per_iter}
        self._reset(now)
        return row


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fmt(v: Any) -> Any:
    return f"{v:.9g}" if isinstance(v, float) else v


def _int_or(v: Optional[str], default: int) -> int:
    try:
        return int(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


# ----------------------------------------------------------------------------------------------------------
# non-finite losses, signals
# ----------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------
# distributed (torchrun)
# ----------------------------------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on CUDA, gloo on CPU).

    Without ``WORLD_SIZE`` > 1 this is a single process and nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # a long timeout: rank 0 alone evaluates (--eval_every) while the others wait at a barrier
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=2))
    return info


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
