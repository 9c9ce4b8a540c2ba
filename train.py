"""Train an SSD (ssd.pytorch's train.py, with its flags, made complete).

    python train.py                                        # SSD300 on VOC07+12, the paper's ~77 mAP recipe
    python train.py --dataset custom --dataset_root DIR --preset cpu-demo --max_iter 3000
    torchrun --nproc_per_node 4 train.py --batch_size 8   # DistributedDataParallel, batch 8 per process
    python train.py --resume weights/ssd300_VOC_latest.txt # (or a .pth, or `latest`) continue exactly

Iteration-based loop over an endless reshuffled sampler; linear warm-up, then step decay at --lr_steps (or
cosine); optional AMP (bf16 autocast, fp16 with loss scaling); atomic checkpoints ``ssd{size}_{dataset}_{iter}.pth``
every --save_every plus ``ssd{size}_{dataset}_final.pth`` at the end, and ``ssd{size}_{dataset}_latest.txt``
naming the newest one (``--resume latest`` reads it). SIGINT / SIGTERM save a checkpoint and exit cleanly.
Non-finite losses are skipped; after --max_nonfinite in a row the run stops, leaving the last good checkpoint.
Logs: a tqdm bar (or one line per --log_every when not on a terminal), ``ssd{size}_{dataset}_log.csv`` (and
``..._eval.csv`` with --eval_every) in --save_folder, TensorBoard events in ``{save_folder}/tb`` when
tensorboard is installed.

Test hooks (environment, read when training starts): ``SSD_TEST_INJECT_NAN_AT=5`` or ``5,6`` or ``5-9`` makes the
loss of those iterations NaN; ``SSD_TEST_SAVE_DELAY=0.2`` sleeps inside each checkpoint write (before the rename).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from utils.cli import Parser, check_writable_folder, str2bool
from utils.errors import UserError, run_cli

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

CSV_FIELDS = ("iteration", "loss", "loss_l", "loss_c", "lr", "images_per_s", "skipped", "elapsed_s")


# ----------------------------------------------------------------------------------------------------------
# flags
# ----------------------------------------------------------------------------------------------------------


def _int_list(values: Sequence[str]) -> List[int]:
    out: List[int] = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            try:
                out.append(int(float(part)))
            except ValueError:
                raise UserError(f"--lr_steps: {part!r} is not an iteration number", code=2) from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = Parser("train.py", description="Train an SSD detector (ssd.pytorch-compatible flags).",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Multi-GPU: torchrun --nproc_per_node N train.py ... (--batch_size is per process; with N "
                       "processes the global batch is N x --batch_size, so scale --lr by N for SGD, or keep the "
                       "global batch at 32 with --batch_size 32/N).")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=None, help="VOC (default), COCO or custom")
    g.add_argument("--dataset_root", default=None,
                   help="dataset folder (default ~/data/VOCdevkit for VOC, ~/data/coco for COCO; required for custom)")
    g.add_argument("--train_split", default=None,
                   help="training split (default: VOC 2007+2012 trainval, COCO trainval35k, custom train)")
    g.add_argument("--year", default=None, help="VOC years of --train_split, e.g. 2007 or 2007+2012")
    g.add_argument("--keep_difficult", action=argparse.BooleanOptionalAction, default=None,
                   help="train on VOC 'difficult' objects too (default off, as the paper)")
    g.add_argument("--augment", choices=("ssd", "flip", "none"), default=None,
                   help="ssd: the paper's photometric + zoom-out + crop + flip (default); flip: mirror only; none")
    g.add_argument("--batch_size", type=int, default=None, help="images per process and iteration (default 32)")
    g.add_argument("--num_workers", type=int, default=None, help="data loading processes (default 4)")

    g = p.add_argument_group("model")
    g.add_argument("--size", type=int, choices=(200, 300, 512), default=None,
                   help="input size: 300 (default), 512, or 200 (lighter, for CPU demos)")
    g.add_argument("--prior_scales", choices=("auto", "voc", "coco"), default=None,
                   help="default-box sizes: voc (smallest 0.1 of the image, the paper's VOC setting), coco (smallest "
                        "0.07, the paper's COCO setting: better for small objects); auto (default) = coco for "
                        "--dataset COCO, else voc")
    g.add_argument("--width", type=float, default=None,
                   help="channel multiplier of VGG and extras (default 1.0 = the paper; 0.25 for CPU demos)")
    g.add_argument("--batch_norm", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm after every conv (for training from scratch; default off = the paper)")
    g.add_argument("--stem", choices=("vgg", "s2"), default=None,
                   help="vgg (default, the paper) or s2: conv1_1 a 7x7 stride-2 conv and no pool1, so the first "
                        "block runs at half resolution (CPU demos; from scratch only)")
    g.add_argument("--basenet", default=None,
                   help="ImageNet VGG-16 weights (vgg16_reducedfc.pth), looked up in --save_folder or as a path; "
                        "'none' trains from scratch. Default: vgg16_reducedfc.pth for the paper's model, none "
                        "with --width/--batch_norm")
    g.add_argument("--freeze", choices=("auto", "none", "conv1", "conv2", "conv3"), default=None,
                   help="VGG blocks kept fixed (no update, no backward through them). auto (default): conv2 "
                        "(conv1_1..conv2_2, as the original Caffe SSD) when pre-trained weights are loaded "
                        "(--basenet or a bare --resume), none from scratch. ssd.pytorch trained all: --freeze none")
    g.add_argument("--sync_bn", action="store_true", default=None,
                   help="with --batch_norm under torchrun on GPUs: synchronise BatchNorm statistics across GPUs")

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="sgd (default, the paper: momentum, weight decay on all) or adamw (no decay on BN/bias)")
    g.add_argument("--lr", "--learning-rate", type=float, default=None, help="base learning rate (default 1e-3)")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    g.add_argument("--weight_decay", type=float, default=None, help="weight decay (default 5e-4)")
    g.add_argument("--gamma", type=float, default=None, help="step decay factor at each --lr_steps (default 0.1)")
    g.add_argument("--lr_schedule", choices=("step", "cosine"), default=None,
                   help="step (default: x gamma at --lr_steps) or cosine (to 0 at --max_iter)")
    g.add_argument("--lr_steps", nargs="+", default=None,
                   help="iterations where the LR is multiplied by gamma (default from the dataset config, "
                        "VOC 80000 100000 120000)")
    g.add_argument("--max_iter", type=int, default=None,
                   help="iterations to train (default from the dataset config: VOC 120000, COCO 400000)")
    g.add_argument("--warmup", type=int, default=None,
                   help="linear LR warm-up iterations (default 500; 0 disables)")
    g.add_argument("--warmup_factor", type=float, default=None,
                   help="LR multiplier at the first warm-up iteration (default 1/3)")
    g.add_argument("--grad_clip", type=float, default=None, help="clip the gradient norm to this (default 0 = off)")
    g.add_argument("--background_prior", type=float, default=None, metavar="P",
                   help="start the confidence heads at P(background) = P for every prior (e.g. 0.99; cpu-demo "
                        "preset) instead of ssd.pytorch's zero bias (default 0 = off); fresh heads only")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: bf16 autocast (CPUs, recent GPUs) or fp16 with loss scaling")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format: faster convolutions (default on for CPUs, off on GPUs)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 0); fixes data order and augmentation")
    g.add_argument("--max_nonfinite", type=int, default=None,
                   help="stop after this many NaN/inf losses in a row (each is skipped; default 5)")
    g.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="cpu-demo: width 0.25 + BatchNorm + the s2 stem from scratch, heads starting at P(background) "
                        "0.99, AdamW 1.4e-3, warm-up 50, cosine, grad clip 10, flip augmentation, bf16 autocast where "
                        "the CPU has it, channels_last, batch 16, 3000 iterations. Flags given explicitly override it")

    g = p.add_argument_group("run")
    g.add_argument("--resume", default=None,
                   help="a checkpoint of this script (continues exactly: weights, optimizer, schedule, data order, "
                        "RNG), 'latest' (the newest in --save_folder), or a bare ssd.pytorch state_dict (weights "
                        "only; training starts at --start_iter)")
    g.add_argument("--start_iter", type=int, default=None,
                   help="iteration to start at when --resume is a bare state_dict (default 0)")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--cuda", type=str2bool, default=None,
                   help="ssd.pytorch's flag, still accepted: false forces the CPU with --device auto")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--save_folder", default=None, help="where checkpoints and logs go (default weights/)")
    g.add_argument("--save_every", type=int, default=None, help="checkpoint every N iterations (default 5000)")
    g.add_argument("--log_every", type=int, default=None, help="log every N iterations (default 10)")
    g.add_argument("--eval_every", type=int, default=None,
                   help="every N iterations compute mAP on --eval_split and log it (default 0 = never)")
    g.add_argument("--eval_split", default=None,
                   help="held-out split for --eval_every (default: VOC 2007 test, COCO minival2014, custom val)")
    g.add_argument("--eval_metric", choices=("voc07", "area"), default=None,
                   help="metric of --eval_every: voc07 (default, the 11-point VOC2007 mAP) or area (VOC2010+); "
                        "COCO datasets always get COCO AP@[.5:.95]")
    g.add_argument("--eval_batch_size", type=int, default=None, help="batch size of --eval_every (default 16)")
    g.add_argument("--time_budget", type=float, default=None,
                   help="stop (and save) after this many seconds of training; the schedule is still over --max_iter")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="write TensorBoard events to {save_folder}/tb when tensorboard is installed (default on)")
    g.add_argument("--visdom", type=str2bool, nargs="?", const=True, default=None,
                   help="accepted for ssd.pytorch compatibility; losses go to the CSV log and TensorBoard instead")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Set[str]]:
    """Parse flags. Returns the namespace (None for flags not given) and the set of flags given explicitly."""
    ns = build_parser().parse_args(argv)
    explicit = {k for k, v in vars(ns).items() if v is not None}
    return ns, explicit


def _prior_config(s: Any) -> str:
    """Name of the prior-box config (data.config) for these settings: ``VOC`` or ``COCO`` scales."""
    scales = (s.prior_scales or "auto").lower()
    if scales == "auto":
        return "COCO" if s.dataset == "COCO" else "VOC"
    return scales.upper()


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
        if key in explicit:
            continue
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
        setattr(out, key, value)
    out.preset = preset
    if isinstance(out.lr_steps, (list, tuple)) and out.lr_steps and isinstance(out.lr_steps[0], str):
        out.lr_steps = _int_list(out.lr_steps)
    if out.dataset_root is None:
        out.dataset_root = {"VOC": os.path.join("~", "data", "VOCdevkit"),
                            "COCO": os.path.join("~", "data", "coco")}.get(out.dataset)
        if out.dataset_root is None:
            raise UserError("--dataset custom needs --dataset_root (a folder with labels.txt, Annotations/, "
                            "JPEGImages/ and ImageSets/Main/; `python -m data.synthetic --out DIR` makes one)",
                            code=2)
    out.dataset_root = os.path.expanduser(out.dataset_root)
    from data.config import get_config
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


# ----------------------------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------------------------

def _cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _resolve_resume(path: str, save_folder: str, size: int, dataset: str) -> str:
    from utils.training import latest_checkpoint
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


def _check_save_folder(folder: str) -> None:
    check_writable_folder(folder, "--save_folder")


def _check_resume_architecture(state: Mapping[str, torch.Tensor], path: str, size: int, num_classes: int,
                               stem: str = "vgg") -> None:
    """Name the mismatch (input size, class count or stem) before a strict load lists tensor shapes."""
    from utils.loading.checkpoint import infer_architecture
    arch = infer_architecture(state, path)
    if arch["size"] != size:
        raise UserError(f"checkpoint {path} is an SSD{arch['size']}, but this run trains an SSD{size} — pass "
                        f"--size {arch['size']} or resume from an SSD{size} checkpoint")
    if arch["num_classes"] != num_classes:
        raise UserError(f"checkpoint {path} has {arch['num_classes']} classes (with background) but the dataset "
                        f"has {num_classes} — resume with the dataset it was trained on, or start a new run")
    if arch["stem"] != stem:
        raise UserError(f"checkpoint {path} has the {arch['stem']} stem, but this run trains the {stem} stem — pass "
                        f"--stem {arch['stem']}")


@dataclass
class ResumeSource:
    """What --resume names: its path and loaded content; ``full`` for this script's training checkpoints
    (exact continuation), False for bare state_dicts (weights only)."""

    path: str
    checkpoint: Any

    def __post_init__(self) -> None:
        from utils.loading.checkpoint import CHECKPOINT_FORMAT
        obj = self.checkpoint
        self.full = isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT and "optimizer" in obj


def _basenet_path(basenet: str, save_folder: str) -> str:
    for cand in (os.path.join(save_folder, basenet), basenet):
        if os.path.isfile(cand):
            return cand
    raise UserError(
        f"base network not found: {os.path.join(save_folder, basenet)} — make it from torchvision's ImageNet "
        f"VGG-16 with `python -m weights.convert_vgg vgg16-397923af.pth -o "
        f"{os.path.join(save_folder, 'vgg16_reducedfc.pth')} --fold-input-norm` (see weights/README.md; or put "
        "ssd.pytorch's vgg16_reducedfc.pth there), or pass --basenet none to train from scratch")


def _parse_inject(value: Optional[str]) -> Set[int]:
    """``SSD_TEST_INJECT_NAN_AT``: ``5``, ``5,6`` or ``5-9`` (1-based iteration numbers)."""
    out: Set[int] = set()
    for part in (value or "").replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _info(msg: str, main: bool = True) -> None:
    if main:
        print(msg, flush=True)


def _note(msg: str, main: bool = True) -> None:
    if main:
        print(f"note: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.loading.checkpoint import read_checkpoint
    from utils.device import resolve_device
    from utils.training import cleanup_distributed, init_distributed

    ns, explicit = parse_args(argv)
    resume: Optional[ResumeSource] = None
    ckpt_config = None
    if ns.resume:
        # `--resume latest` looks for ssd{size}_{dataset}_* in --save_folder: those three come from the flags
        path = _resolve_resume(ns.resume, ns.save_folder or DEFAULTS["save_folder"], ns.size or DEFAULTS["size"],
                               ns.dataset or DEFAULTS["dataset"])
        resume = ResumeSource(path, read_checkpoint(path))
        if resume.full and isinstance(resume.checkpoint.get("config"), Mapping):
            ckpt_config = resume.checkpoint["config"]

    device_name = ns.device if ns.device is not None else DEFAULTS["device"]
    device = resolve_device(device_name, ns.cuda)
    s = resolve_settings(ns, explicit, ckpt_config, device.type == "cuda" or _cpu_bf16(), device.type)
    validate(s)
    _check_save_folder(s.save_folder)
    if s.threads:
        torch.set_num_threads(s.threads)

    dist = init_distributed(device.type)
    try:
        if device.type == "cuda" and dist.enabled:
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        return train(s, explicit, device, dist, resume)
    finally:
        cleanup_distributed(dist)


def train(s: argparse.Namespace, explicit: Set[str], device: torch.device, dist,
          resume: Optional[ResumeSource]) -> int:
    """Set up data, model and optimiser from the resolved settings ``s``, then run the loop (see module doc)."""
    import torch.utils.data as tud

    from data import build_dataset, detection_collate, unwrap_worker_error
    from data.config import MEANS, get_config
    from layers.multibox_loss import MultiBoxLoss
    from ssd import build_ssd
    from data.transforms import SSDAugmentation
    from utils.loading.checkpoint import check_finite, load_basenet, load_into, model_config, split_checkpoint
    from utils.device import amp_dtype, autocast
    from utils.training import (EndlessBatchSampler, LossWindow, LRSchedule, NonFiniteGuard, SeededDataset,
                                StopRequest, TrainLog, build_optimizer, build_scheduler, checkpoint_path,
                                format_eta, freeze_vgg, latest_checkpoint, latest_pointer_path, make_checkpoint,
                                multibox_loss_sums, remove_stale_temp_files, restore_rng_state, scheduler_step,
                                seed_everything, set_scheduler_iteration, write_checkpoint)

    main = dist.is_main
    if s.cuda and device.type != "cuda":
        _note("--cuda true, but CUDA is not available: training on the CPU", main)
    if s.visdom:
        _note("--visdom is no longer used: losses go to the CSV log in --save_folder (and TensorBoard events "
              "when tensorboard is installed)", main)
    if s.sync_bn and not (dist.enabled and device.type == "cuda" and s.batch_norm):
        _note("--sync_bn only applies to --batch_norm models under torchrun on GPUs; ignored", main)
    seed_everything(s.seed)

    # ---- data
    transform = SSDAugmentation(s.size, MEANS, mode=s.augment)
    dataset = build_dataset(s.dataset, s.dataset_root, s.train_split, transform, keep_difficult=s.keep_difficult,
                            year=s.year)
    if len(dataset) == 0:
        raise UserError(f"the training split of {s.dataset_root} is empty — list image ids in its split file")
    class_names = list(dataset.class_names)
    num_classes = len(class_names) + 1
    eval_dataset = None
    if s.eval_every and main:
        eval_dataset = _build_eval_dataset(s, build_dataset)

    # ---- model
    prior_config = _prior_config(s)
    model = build_ssd("train", s.size, num_classes, cfg=get_config(prior_config, s.size), width=s.width,
                      batch_norm=s.batch_norm, stem=s.stem)
    if s.background_prior > 0:  # any checkpoint loaded below overwrites these biases
        model.init_background_prior(s.background_prior)
    start_iter = 0
    pretrained = False  # ImageNet / detection weights loaded into a fresh run (decides --freeze auto)
    ckpt = resume.checkpoint if resume is not None else None
    resume_path = resume.path if resume is not None else None
    full_resume = resume is not None and resume.full
    if ckpt is not None:
        state, _ = split_checkpoint(ckpt, resume_path)
        check_finite(state, resume_path)
        _check_resume_architecture(state, resume_path, s.size, num_classes, s.stem)
        load_into(model, state, resume_path)
        del state
        if full_resume:
            start_iter = int(ckpt.get("iteration", 0))
            names = ckpt.get("class_names")
            if names is not None and list(names) != class_names:
                raise UserError(f"checkpoint {resume_path} was trained on classes {list(names)[:5]}... but the "
                                f"dataset has {class_names[:5]}... — resume with the same dataset")
            if "start_iter" in explicit and s.start_iter != start_iter:
                _note(f"--start_iter {s.start_iter} ignored: {resume_path} continues at iteration {start_iter}", main)
        else:
            start_iter = s.start_iter
            pretrained = True
        _info(f"resumed from {resume_path} at iteration {start_iter}"
              f"{'' if full_resume else ' (weights only: a bare state_dict)'}", main)
    else:
        basenet = s.basenet
        if basenet is None:
            basenet = "vgg16_reducedfc.pth" if s.width == 1.0 and not s.batch_norm and s.stem == "vgg" else "none"
        if str(basenet).lower() != "none":
            path = _basenet_path(basenet, s.save_folder)
            if s.width != 1.0 or s.batch_norm or s.stem != "vgg":
                extra = f"{' --batch_norm' if s.batch_norm else ''}{' --stem ' + s.stem if s.stem != 'vgg' else ''}"
                raise UserError(f"--basenet {path} holds the paper's VGG-16; it does not fit --width {s.width}{extra}"
                                " — pass --basenet none to train from scratch")
            load_basenet(model, path)
            pretrained = True
            _info(f"loaded base network {path}", main)
        else:
            _info("training from scratch (--basenet none)", main)
        start_iter = s.start_iter
    if start_iter >= s.max_iter:
        raise UserError(f"nothing to train: the run starts at iteration {start_iter} and --max_iter is {s.max_iter} "
                        "— raise --max_iter to continue", code=2)

    if s.freeze == "auto":
        s.freeze = "conv2" if pretrained else "none"
    frozen = freeze_vgg(model, s.freeze)
    if frozen:
        _info(f"frozen: VGG up to {s.freeze}_{2 if s.freeze != 'conv3' else 3} ({frozen / 1e6:.2f} M parameters; "
              "--freeze none trains them)", main)
    model.to(device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if dist.enabled:
        if s.sync_bn and device.type == "cuda" and s.batch_norm:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ---- optimisation
    optimizer = build_optimizer(model, s.optimizer, s.lr, s.momentum, s.weight_decay)
    schedule = LRSchedule(s.lr_schedule, s.warmup, s.warmup_factor, list(s.lr_steps), s.gamma, s.max_iter)
    scheduler = build_scheduler(optimizer, schedule)
    use_amp = bool(s.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype(device) == torch.float16)
    if full_resume:
        _restore_training_state(ckpt, optimizer, scheduler, scaler, resume_path)
        _apply_current_hyperparameters(s, optimizer, scheduler, schedule)
        restore_rng_state(ckpt.get("rng") or {})
    else:
        set_scheduler_iteration(scheduler, start_iter)
    resumed = ckpt is not None
    if resume is not None:
        resume.checkpoint = ckpt = None  # do not keep a second copy of the weights alive while training
    criterion = MultiBoxLoss(num_classes, 0.5, True, 0, True, 3, 0.5, False, device.type == "cuda",
                             variance=get_config(prior_config, s.size)["variance"])

    # ---- data order: endless, sharded, resumable by position
    sampler = EndlessBatchSampler(len(dataset), s.batch_size, s.seed, dist.rank, dist.world_size, start_iter)
    loader = tud.DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=s.num_workers,
                            collate_fn=detection_collate, pin_memory=device.type == "cuda",
                            persistent_workers=False)

    # ---- bookkeeping (rank 0)
    run = f"ssd{s.size}_{s.dataset}"
    config = dict(model_config(model))
    config.update({k: getattr(s, k) for k in RUN_SETTINGS})
    config["dataset_root"] = os.path.abspath(s.dataset_root)  # a resume from another folder still finds it
    config["lr_steps"] = list(s.lr_steps)
    config["world_size"] = dist.world_size
    pointer = latest_pointer_path(s.save_folder, s.size, s.dataset)
    log = None
    eval_log = None
    if main:
        os.makedirs(s.save_folder, exist_ok=True)
        for stale in remove_stale_temp_files(s.save_folder, s.size, s.dataset):
            _note(f"removed {stale} (left by a run killed while saving)")
        tb_dir = os.path.join(s.save_folder, "tb") if s.tensorboard else None
        log = TrainLog(os.path.join(s.save_folder, f"{run}_log.csv"), CSV_FIELDS, tb_dir,
                       resume_at=start_iter if resumed else None)
        if eval_dataset is not None:
            eval_log = TrainLog(os.path.join(s.save_folder, f"{run}_eval.csv"),
                                ["iteration", "mAP"] + [f"AP_{c}" for c in class_names], None,
                                resume_at=start_iter if resumed else None)
        n_params = sum(p.numel() for p in model.parameters())
        variant = f"{' +BN' if s.batch_norm else ''}{' stem s2' if s.stem == 's2' else ''}"
        _info(f"SSD{s.size} width {s.width:g}{variant}: {n_params / 1e6:.2f} M parameters, "
              f"{num_classes} classes (with background); {len(dataset)} training images from {s.dataset_root}")
        _info(f"device {device}{f' x {dist.world_size} processes' if dist.enabled else ''}; batch {s.batch_size}"
              f"{' per process' if dist.enabled else ''}; {s.optimizer} lr {s.lr:g} ({s.lr_schedule}, warm-up "
              f"{s.warmup}); amp {'on (' + str(amp_dtype(device)).replace('torch.', '') + ')' if use_amp else 'off'}; "
              f"channels_last {'on' if s.channels_last else 'off'}; iterations {start_iter}..{s.max_iter}")

    def save(tag: Any, iteration: int) -> str:
        path = checkpoint_path(s.save_folder, s.size, s.dataset, tag)
        ckpt_obj = make_checkpoint(model, optimizer, scheduler, scaler, iteration, class_names, config)
        write_checkpoint(ckpt_obj, path, pointer)
        return path

    inject = _parse_inject(os.environ.get("SSD_TEST_INJECT_NAN_AT"))
    guard = NonFiniteGuard(s.max_nonfinite)
    global_batch = s.batch_size * dist.world_size
    bar = _progress(main, start_iter, s.max_iter)
    window = LossWindow()
    t_start = time.perf_counter()
    last_saved: Optional[Tuple[int, str]] = None
    exit_message = ""
    iteration = start_iter
    # BatchNorm statistics move in the forward pass: a skipped (non-finite) step restores them
    bn_buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    data_iter = iter(loader)
    net.train()
    try:
        with StopRequest() as stop:
            for it in range(start_iter, s.max_iter):
                try:
                    images, targets = next(data_iter)
                except UserError as exc:  # a bad image/annotation, possibly re-raised from a worker
                    raise (unwrap_worker_error(exc) or exc) from None
                except RuntimeError:
                    if stop.requested:  # Ctrl-C also reached the workers: stop without this batch
                        exit_message = f"{stop.name} received"
                        break
                    raise
                lr_used = optimizer.param_groups[0]["lr"]
                images = images.to(device, non_blocking=True)
                if s.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = [t.to(device, non_blocking=True) for t in targets]

                bn_backup = [b.clone() for b in bn_buffers]
                with autocast(device, use_amp):
                    loc, conf, priors = net(images)
                loss_l_sum, loss_c_sum, num_pos = multibox_loss_sums(criterion, loc, conf, priors, targets)
                if it + 1 in inject:
                    loss_l_sum = loss_l_sum * float("nan")
                budget_over = s.time_budget is not None and time.perf_counter() - t_start >= s.time_budget
                stats = torch.stack([loss_l_sum.detach(), loss_c_sum.detach(), num_pos,
                                     torch.tensor(float(stop.requested or (main and budget_over)), device=device)])
                if dist.enabled:  # global positives for the normalisation; one decision to stop for all ranks
                    torch.distributed.all_reduce(stats)
                n_global = stats[2].clamp(min=1.0)
                loss_l = float(stats[0] / n_global)
                loss_c = float(stats[1] / n_global)
                finite = math.isfinite(loss_l + loss_c)
                if finite:
                    # DDP averages gradients over ranks: scale by world size so the result is d(sum)/N_global
                    loss = (loss_l_sum + loss_c_sum) * (dist.world_size / n_global)
                    scaler.scale(loss).backward()
                    if s.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                        if not scaler.is_enabled() and not torch.isfinite(gnorm):
                            finite = False  # finite loss, exploding gradient: skip this step as well
                    if finite or scaler.is_enabled():
                        scaler.step(optimizer)
                        scaler.update()
                if not finite:
                    with torch.no_grad():
                        for b, saved in zip(bn_buffers, bn_backup):
                            b.copy_(saved)
                optimizer.zero_grad(set_to_none=True)
                scheduler_step(scheduler)
                iteration = it + 1

                window.add(loss_l, loss_c, finite)
                if finite:
                    guard.update(True, iteration)
                else:
                    last_good = last_saved[1] if last_saved else latest_checkpoint(s.save_folder, s.size, s.dataset)
                    guard.update(False, iteration, f"; the last good checkpoint is {last_good}" if last_good else
                                 "; no checkpoint was written yet")

                if main and (iteration % s.log_every == 0 or iteration == s.max_iter):
                    row = window.row(iteration, lr_used, global_batch, guard.total, time.perf_counter() - t_start)
                    log.log(row)
                    if bar is None:  # not a terminal: one line per --log_every (ssd.pytorch printed these)
                        print(f"iter {iteration}/{s.max_iter} || loss {row['loss']:.4f} (loc {row['loss_l']:.4f}, "
                              f"conf {row['loss_c']:.4f}) || lr {row['lr']:.2e} || {row['images_per_s']:.1f} img/s "
                              f"|| eta {format_eta((s.max_iter - iteration) * row['seconds_per_iteration'])}"
                              f"{f' || skipped {guard.total}' if guard.total else ''}", flush=True)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"loss {loss_l + loss_c:.3f} (loc {loss_l:.3f} conf {loss_c:.3f}) "
                                        f"lr {lr_used:.1e}", refresh=False)

                stopping = bool(stats[3] > 0)
                if main and iteration % s.save_every == 0 and iteration < s.max_iter and not stopping:
                    last_saved = (iteration, save(iteration, iteration))
                if s.eval_every and iteration % s.eval_every == 0:
                    if main:
                        _evaluate(s, model, class_names, device, use_amp, eval_dataset, eval_log, iteration)
                        model.train()
                    if dist.enabled:
                        torch.distributed.barrier()
                if stopping:
                    if stop.requested or not main:
                        reason = f"{stop.name or 'a signal'} received"
                    else:
                        reason = f"time budget of {s.time_budget:g} s used"
                    exit_message = reason
                    break
        # ---- the end: completed, time budget, or signal
        if main:
            if exit_message.endswith("received"):
                path = last_saved[1] if last_saved and last_saved[0] == iteration else save(iteration, iteration)
                _info(f"\nstopped at iteration {iteration} ({exit_message}); saved {path} — continue with "
                      f"--resume {path}")
            else:
                path = save("final", iteration)
                note = f" ({exit_message})" if exit_message else ""
                _info(f"\ntraining finished at iteration {iteration}{note}; saved {path}"
                      f"{f'; {guard.total} non-finite steps were skipped' if guard.total else ''}")
        if dist.enabled:
            torch.distributed.barrier()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        if eval_log is not None:
            eval_log.close()
        del data_iter
    return 0


def _progress(main: bool, start: int, total: int):
    """A tqdm bar on a terminal (rank 0); None elsewhere (then one line per --log_every is printed)."""
    if not main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, dynamic_ncols=True, unit="it", smoothing=0.05)


def _restore_training_state(ckpt: Mapping[str, Any], optimizer, scheduler, scaler, path: str) -> None:
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"the optimizer state in {path} does not fit this run ({exc}) — resume with the same "
                        "--optimizer, or pass the file as weights only by re-saving its 'model' entry") from None
    if ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])


def _apply_current_hyperparameters(s: argparse.Namespace, optimizer, scheduler, schedule) -> None:
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
    from utils.training import set_scheduler_iteration
    set_scheduler_iteration(scheduler, scheduler.last_epoch)


def _build_eval_dataset(s: argparse.Namespace, build_dataset):
    split, year = s.eval_split, None
    if split is None:
        split, year = {"VOC": ("test", "2007"), "COCO": ("minival2014", None), "custom": ("val", None)}[s.dataset]
    elif s.dataset == "VOC" and " " in split:
        year, split = split.split(None, 1)
    ds = build_dataset(s.dataset, s.dataset_root, split, None, keep_difficult=True, year=year)
    if len(ds) == 0:
        raise UserError(f"--eval_split {split} of {s.dataset_root} is empty — list image ids in its split file")
    return ds


def _evaluate(s, model: nn.Module, class_names: List[str], device: torch.device, amp: bool, dataset, log,
              iteration: int) -> None:
    """mAP of the current weights on the held-out split, through eval's code (a test-phase copy of the model)."""
    from data.config import get_config
    from ssd import build_ssd
    from utils.metrics.evaluation import evaluate_model
    from utils.inference.predictor import Predictor

    prior_config = _prior_config(s)
    test_model = build_ssd("test", s.size, len(class_names) + 1, cfg=get_config(prior_config, s.size),
                           width=s.width, batch_norm=s.batch_norm)
    test_model.load_state_dict(model.state_dict())
    predictor = Predictor(test_model, class_names, s.size, device, amp, channels_last=s.channels_last)
    t0 = time.perf_counter()
    result = evaluate_model(predictor, dataset, s.eval_batch_size, s.num_workers, metric=s.eval_metric,
                            set_name=str(getattr(dataset, "split", "val")))
    row: Dict[str, Any] = {"iteration": iteration, "mAP": float(result["mAP"])}
    for name, ap in (result.get("ap") or {}).items():
        row[f"AP_{name}"] = float(ap)
    log.log(row, tb_prefix="eval")
    print(f"eval at iteration {iteration}: {result.get('metric', s.eval_metric)} mAP {row['mAP']:.4f} "
          f"on {len(dataset)} images ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    run_cli(main)
