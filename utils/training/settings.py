"""The settings of a training run: built-in defaults, presets, which settings a resume restores, and how the
final value of each is chosen (explicit flag > the resumed checkpoint's config > --preset > built-in default;
then the dataset config fills ``max_iter`` / ``lr_steps``). train.py declares the flags; this module decides.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch

from data.config import get_config
from utils.errors import UserError
from utils.loading.config import ModelConfig

DATASETS = ("VOC", "COCO", "custom")
PRESET_NAMES = ("cpu-demo",)
AUTO = "auto"  # --max_iter auto

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
    "tensorboard": True, "freeze": "auto", "background_prior": 0.0, "prior_scales": "auto", "pretrained": None,
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
    "background_prior", "prior_scales", "pretrained",
)

# Settings that are the architecture: a fine-tuning run (--pretrained) takes them from the pretrained file
ARCHITECTURE: Tuple[str, ...] = ("size", "width", "batch_norm", "stem", "prior_scales")

# ModelConfig's post-processing conventions (issue 17): a fine-tuning run keeps the pretrained file's, a resumed
# run the checkpoint's; otherwise ssd.pytorch's (ModelConfig's defaults)
CONVENTIONS: Tuple[str, ...] = ("prior_clip", "clip_before_nms", "nms_candidates", "max_per_image")

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
    """The architecture these settings train (``num_classes`` with background, from the dataset), with the
    post-processing conventions of ``s.conventions`` (set by :func:`resolve_settings`; absent = ssd.pytorch's)."""
    return ModelConfig(s.size, num_classes, s.width, s.batch_norm, s.stem, prior_config_name(s),
                       **(getattr(s, "conventions", None) or {}))


def architecture_of(config: ModelConfig) -> Dict[str, Any]:
    """The :data:`ARCHITECTURE` settings that build ``config``'s network."""
    return {"size": config.size, "width": config.width, "batch_norm": config.batch_norm, "stem": config.stem,
            "prior_scales": config.prior_config.lower()}


def _disagrees(key: str, given: Any, wanted: Any) -> bool:
    if key == "width":
        return not math.isclose(float(given), float(wanted), rel_tol=1e-3)
    if key == "prior_scales":
        return str(given).lower() not in ("auto", wanted)
    return given != wanted


def _as_flag(key: str, value: Any) -> str:
    if key == "batch_norm":
        return "--batch_norm" if value else "--no-batch_norm"
    return f"--{key} {value}"


def apply_pretrained(out: argparse.Namespace, explicit: Set[str], config: ModelConfig, name: str) -> None:
    """A fine-tuning run's architecture and conventions are the pretrained file's (``config``); architecture flags
    given explicitly must agree with it (one usage error naming every one that does not)."""
    arch = architecture_of(config)
    wrong = [_as_flag(k, getattr(out, k)) for k in ARCHITECTURE
             if k in explicit and _disagrees(k, getattr(out, k), arch[k])]
    if wrong:
        raise UserError(f"--pretrained {name} is an SSD{config.size} of width {config.width:g}, "
                        f"{'with' if config.batch_norm else 'without'} BatchNorm, {config.stem} stem, "
                        f"{config.prior_config} default boxes; {' and '.join(wrong)} disagree — leave them out (a "
                        "fine-tuning run keeps the pretrained model's architecture)", code=2)
    if "basenet" in explicit and str(out.basenet).lower() != "none":
        raise UserError(f"--basenet {out.basenet} and --pretrained {name} both give starting weights — give one",
                        code=2)
    for key, value in arch.items():
        setattr(out, key, value)
    out.basenet = "none"
    out.conventions = {k: getattr(config, k) for k in CONVENTIONS}


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
                     bf16_ok: bool, device_type: str = "cpu",
                     pretrained: Optional[ModelConfig] = None) -> argparse.Namespace:
    """Fill every setting: explicit flag > the resumed checkpoint's config > --preset > built-in default.

    ``pretrained`` (``--pretrained``'s architecture): the :data:`ARCHITECTURE` settings and the post-processing
    conventions come from it (:func:`apply_pretrained`); a resumed run keeps its checkpoint's conventions.

    Then the dataset config fills ``max_iter`` (also for ``--max_iter auto`` until the trainer chooses it) and
    ``lr_steps``. ``auto`` values: the preset's ``amp`` is on where bf16 runs natively (``bf16_ok``);
    ``channels_last`` is on for CPUs, where oneDNN's NHWC convolutions make a step ~15% faster in fp32 and in bf16
    (benchmarks/bench_train.py), and off on GPUs unless asked for.
    """
    out = argparse.Namespace(**vars(ns))
    preset = ns.preset
    if preset is None and ckpt_config and "preset" not in explicit:
        preset = ckpt_config.get("preset")
    for key, default in DEFAULTS.items():
        if key not in explicit:
            setattr(out, key, _chosen(key, default, explicit, ckpt_config, preset, bf16_ok, device_type))
    out.preset = preset
    out.conventions = {k: ckpt_config[k] for k in CONVENTIONS if k in ckpt_config} if ckpt_config else {}
    if pretrained is not None:
        apply_pretrained(out, explicit, pretrained, str(ns.pretrained))
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
    _resolve_max_iter(out, explicit, ckpt_config, int(cfg["max_iter"]))
    if out.lr_steps is None:
        out.lr_steps = [int(s) for s in cfg["lr_steps"]]
    out.lr_steps = [int(s) for s in out.lr_steps]
    return out


def _resolve_max_iter(out: argparse.Namespace, explicit: Set[str], ckpt_config: Optional[Mapping[str, Any]],
                      config_max_iter: int) -> None:
    """``max_iter``: a number, or ``auto`` — the trainer chooses it from the speed it measures, to fill
    ``--time_budget`` (utils/training/budget.py). Sets ``max_iter_auto`` (still to choose; until then ``max_iter``
    is the dataset config's, the length its ``lr_steps`` are scaled from) and ``max_iter_fit`` (the record of the
    choice, which a resume keeps — also when the command line says ``auto`` again)."""
    fit = ckpt_config.get("max_iter_fit") if ckpt_config else None
    out.max_iter_fit = None
    if fit and out.max_iter in (AUTO, ckpt_config.get("max_iter")):
        out.max_iter, out.max_iter_fit = int(ckpt_config["max_iter"]), dict(fit)
    out.max_iter_auto = out.max_iter == AUTO
    if out.max_iter_auto and "lr_steps" in explicit:
        raise UserError("--lr_steps are iteration numbers, but --max_iter auto chooses the number of iterations "
                        "while training — give --max_iter N, or leave the steps to the dataset config (scaled to "
                        "the chosen length)", code=2)
    if out.max_iter is None or out.max_iter_auto:
        out.max_iter = config_max_iter


def validate(s: argparse.Namespace, ranges: Mapping[str, Callable[[Any], Any]]) -> None:
    """Usage errors (exit status 2), one line each.

    ``ranges``: setting → the check its flag parses with (train.py's ``RANGES``: utils.cli's validators, which
    raise ``must be ..., got X``). A value from a preset or a resumed checkpoint never went through the flag's
    parser, so each resolved value is checked here again by the same function — one definition per rule.
    """
    def usage(msg: str) -> None:
        raise UserError(msg, code=2)

    for key, check in ranges.items():
        value = getattr(s, key)
        if value is None:  # optional settings (--threads, --time_budget) unset
            continue
        try:
            check(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            usage(f"--{key} {exc}")
    # rules whose message says more than a range (what 0 means, the unit)
    if s.grad_clip < 0:
        usage(f"--grad_clip must be 0 (off) or positive, got {s.grad_clip}")
    if not 0.0 <= s.background_prior < 1.0:
        usage(f"--background_prior must be in [0, 1) (0 = off), got {s.background_prior}")
    if s.time_budget is not None and not s.time_budget > 0:
        usage(f"--time_budget must be a positive number of seconds, got {s.time_budget}")
    if s.max_iter_auto and s.time_budget is None:
        usage("--max_iter auto needs --time_budget SECONDS (the iterations are chosen to fill it) — or give "
              "--max_iter a number")


def run_config(s: argparse.Namespace, config: ModelConfig, world_size: int) -> Dict[str, Any]:
    """The checkpoint's ``config``: the architecture, every run setting, and the number of processes."""
    out = config.to_dict()
    out.update({k: getattr(s, k) for k in RUN_SETTINGS})
    out["dataset_root"] = os.path.abspath(s.dataset_root)  # a resume from another folder still finds it
    out["lr_steps"] = list(s.lr_steps)
    out["world_size"] = world_size
    if s.max_iter_auto:
        out["max_iter"] = AUTO  # not chosen yet: a resume from here chooses (with its --time_budget)
    if s.max_iter_fit:
        out["max_iter_fit"] = dict(s.max_iter_fit)
    return out
