"""The settings of a training run: built-in defaults, presets, which settings a resume restores, and how the
final value of each is chosen (explicit flag > the resumed checkpoint's config > --preset > built-in default;
then the dataset config fills ``max_iter`` / ``lr_steps``). train.py declares the flags; this module decides.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch

from data.config import get_config
from utils.errors import UserError
from utils.loading.config import ModelConfig

DATASETS = ("VOC", "COCO", "custom")
PRESET_NAMES = ("cpu-demo",)

# Built-in defaults (ssd.pytorch's where it had the flag). None = decided later (from the dataset config).
DEFAULTS: Dict[str, Any] = {
    "dataset": "VOC", "dataset_root": None, "train_split": None, "year": None, "keep_difficult": False,
    "size": 300, "width": 1.0, "batch_norm": False, "stem": "vgg", "basenet": None, "batch_size": 32,
    "resume": None, "start_iter": 0, "num_workers": 4, "cuda": None, "device": "auto", "lr": 1e-3, "momentum": 0.9,
    "weight_decay": 5e-4, "gamma": 0.1, "visdom": False, "save_folder": "weights/", "max_iter": None,
    "lr_steps": None, "warmup": 500, "warmup_factor": 1.0 / 3.0, "lr_schedule": "step", "optimizer": "sgd",
    "grad_clip": 0.0, "augment": "ssd", "amp": False, "channels_last": "auto", "seed": 0, "log_every": 10,
    "save_every": 5000, "eval_every": 0, "eval_split": None, "eval_metric": "voc07", "eval_batch_size": 16,
    "time_budget": None, "max_nonfinite": 5, "threads": None, "sync_bn": False, "preset": None,
    "tensorboard": True, "freeze": "auto", "background_prior": 0.0, "prior_scales": "auto",
}

# The small-compute setting for CPUs (docs/CPU_DEMO.md has the measurements): a quarter-width VGG with BatchNorm and
# a stride-2 stem, trained from scratch by AdamW; bf16 autocast + channels_last triple CPU throughput.
PRESETS: Dict[str, Dict[str, Any]] = {
    "cpu-demo": {
        "width": 0.25, "batch_norm": True, "stem": "s2", "optimizer": "adamw", "lr": 1.4e-3, "weight_decay": 5e-4,
        "warmup": 50, "warmup_factor": 0.001, "lr_schedule": "cosine", "grad_clip": 10.0, "augment": "flip",
        "amp": "auto", "channels_last": True, "batch_size": 16, "basenet": "none", "max_iter": 3000,
        "background_prior": 0.99,
    },
}

# Settings that define a run: on a full --resume they come from the checkpoint unless given on the command line.
RUN_SETTINGS: Tuple[str, ...] = (
    "dataset", "dataset_root", "train_split", "year", "keep_difficult", "size", "width", "batch_norm", "stem",
    "batch_size", "lr", "momentum", "weight_decay", "gamma", "max_iter", "lr_steps", "warmup", "warmup_factor",
    "lr_schedule", "optimizer", "grad_clip", "augment", "amp", "channels_last", "seed", "preset", "freeze",
    "background_prior", "prior_scales",
)

_DEFAULT_ROOTS = {"VOC": os.path.join("~", "data", "VOCdevkit"), "COCO": os.path.join("~", "data", "coco")}


def int_list(values: Sequence[str]) -> List[int]:
    """``--lr_steps 80000 100000`` or ``--lr_steps 80000,100000`` → iteration numbers."""
    out: List[int] = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            try:
                out.append(int(float(part)))
            except ValueError:
                raise UserError(f"--lr_steps: {part!r} is not an iteration number", code=2) from None
    return out


def prior_config_name(s: Any) -> str:
    """Name of the prior-box config (data.config) for these settings: ``VOC`` or ``COCO`` scales."""
    scales = (s.prior_scales or "auto").lower()
    if scales == "auto":
        return "COCO" if s.dataset == "COCO" else "VOC"
    return scales.upper()


def model_config(s: argparse.Namespace, num_classes: int) -> ModelConfig:
    """The architecture these settings train (``num_classes`` with background, from the dataset)."""
    return ModelConfig(s.size, num_classes, s.width, s.batch_norm, s.stem, prior_config_name(s))


def cpu_bf16() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN), which turns the preset's ``amp auto`` on."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _chosen(key: str, default: Any, explicit: Set[str], ckpt_config: Optional[Mapping[str, Any]],
            preset: Optional[str], bf16_ok: bool, device_type: str) -> Any:
    """One setting that was not given explicitly: checkpoint > preset > default, then ``auto`` decided."""
    if ckpt_config is not None and key in RUN_SETTINGS and key in ckpt_config:
        value = ckpt_config[key]
    elif ckpt_config is not None and key == "stem":
        value = "vgg"  # checkpoints written before --stem existed all have the VGG stem
    elif preset and key in PRESETS[preset]:
        value = PRESETS[preset][key]
    else:
        value = default
    if value == "auto" and key == "amp":
        value = bf16_ok
    elif value == "auto" and key == "channels_last":
        value = device_type == "cpu"  # (--freeze auto is decided once the weights are loaded)
    return value


def resolve_settings(ns: argparse.Namespace, explicit: Set[str], ckpt_config: Optional[Mapping[str, Any]],
                     bf16_ok: bool, device_type: str = "cpu") -> argparse.Namespace:
    """Fill every setting: explicit flag > the resumed checkpoint's config > --preset > built-in default.

    Then the dataset config fills ``max_iter`` / ``lr_steps``. ``auto`` values: the preset's ``amp`` is on where
    bf16 runs natively (``bf16_ok``); ``channels_last`` is on for CPUs, where oneDNN's NHWC convolutions make a
    step ~15% faster in fp32 and in bf16 (benchmarks/bench_train.py), and off on GPUs unless asked for.
    """
    out = argparse.Namespace(**vars(ns))
    preset = ns.preset
    if preset is None and ckpt_config and "preset" not in explicit:
        preset = ckpt_config.get("preset")
    for key, default in DEFAULTS.items():
        if key not in explicit:
            setattr(out, key, _chosen(key, default, explicit, ckpt_config, preset, bf16_ok, device_type))
    out.preset = preset
    if isinstance(out.lr_steps, (list, tuple)) and out.lr_steps and isinstance(out.lr_steps[0], str):
        out.lr_steps = int_list(out.lr_steps)
    if out.dataset_root is None:
        out.dataset_root = _DEFAULT_ROOTS.get(out.dataset)
        if out.dataset_root is None:
            raise UserError("--dataset custom needs --dataset_root (a folder with labels.txt, Annotations/, "
                            "JPEGImages/ and ImageSets/Main/; `python -m data.synthetic --out DIR` makes one)",
                            code=2)
    out.dataset_root = os.path.expanduser(out.dataset_root)
    cfg = get_config(out.dataset, out.size)
    if out.max_iter is None:
        out.max_iter = int(cfg["max_iter"])
    if out.lr_steps is None:
        out.lr_steps = [int(s) for s in cfg["lr_steps"]]
    out.lr_steps = [int(s) for s in out.lr_steps]
    return out


def validate(s: argparse.Namespace) -> None:
    """Usage errors (exit status 2), one line each."""
    def usage(msg: str) -> None:
        raise UserError(msg, code=2)

    if s.batch_size < 1:
        usage(f"--batch_size must be at least 1, got {s.batch_size}")
    if s.max_iter < 1:
        usage(f"--max_iter must be at least 1, got {s.max_iter}")
    if s.num_workers < 0:
        usage(f"--num_workers must be 0 or more, got {s.num_workers}")
    if not s.lr > 0:
        usage(f"--lr must be positive, got {s.lr}")
    if not 0 < s.width <= 4:
        usage(f"--width must be in (0, 4], got {s.width}")
    for flag in ("save_every", "log_every", "max_nonfinite"):
        if getattr(s, flag) < 1:
            usage(f"--{flag} must be at least 1, got {getattr(s, flag)}")
    for flag in ("warmup", "eval_every", "start_iter"):
        if getattr(s, flag) < 0:
            usage(f"--{flag} must be 0 or more, got {getattr(s, flag)}")
    if s.grad_clip < 0:
        usage(f"--grad_clip must be 0 (off) or positive, got {s.grad_clip}")
    if not 0.0 <= s.background_prior < 1.0:
        usage(f"--background_prior must be in [0, 1) (0 = off), got {s.background_prior}")
    if s.time_budget is not None and not s.time_budget > 0:
        usage(f"--time_budget must be a positive number of seconds, got {s.time_budget}")
    if s.threads is not None and s.threads < 1:
        usage(f"--threads must be at least 1, got {s.threads}")
    if s.eval_batch_size < 1:
        usage(f"--eval_batch_size must be at least 1, got {s.eval_batch_size}")


def run_config(s: argparse.Namespace, config: ModelConfig, world_size: int) -> Dict[str, Any]:
    """The checkpoint's ``config``: the architecture, every run setting, and the number of processes."""
    out = config.to_dict()
    out.update({k: getattr(s, k) for k in RUN_SETTINGS})
    out["dataset_root"] = os.path.abspath(s.dataset_root)  # a resume from another folder still finds it
    out["lr_steps"] = list(s.lr_steps)
    out["world_size"] = world_size
    return out
