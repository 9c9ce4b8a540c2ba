"""Train an SSD (ssd.pytorch's train.py, with its flags, made complete).

    python train.py                                        # SSD300 on VOC07+12, the paper's ~77 mAP recipe
    python train.py --dataset custom --dataset_root DIR --preset cpu-demo --max_iter 3000
    torchrun --nproc_per_node 4 train.py --batch_size 8   # DistributedDataParallel, batch 8 per process
    python train.py --resume weights/ssd300_VOC_latest.txt # (or a .pth, or `latest`) continue exactly
    python train.py --dataset custom --dataset_root DIR --pretrained ssd300-coco  # fine-tune onto your classes

Iteration-based loop over an endless reshuffled sampler; linear warm-up, then step decay at --lr_steps (or
cosine); optional AMP (bf16 autocast, fp16 with loss scaling); atomic checkpoints ``ssd{size}_{dataset}_{iter}.pth``
every --save_every plus ``ssd{size}_{dataset}_final.pth`` at the end, and ``ssd{size}_{dataset}_latest.txt``
naming the newest one (``--resume latest`` reads it). SIGINT / SIGTERM save a checkpoint and exit cleanly.
Non-finite losses are skipped; after --max_nonfinite in a row the run stops, leaving the last good checkpoint.
Logs: a tqdm bar (or one line per --log_every when not on a terminal), ``ssd{size}_{dataset}_log.csv`` (and
``..._eval.csv`` with --eval_every) in --save_folder, TensorBoard events in ``{save_folder}/tb`` when
tensorboard is installed.

This file declares the flags and resolves them; the run itself is utils/training/ (trainer.py: setup → step →
bookkeeping → finish). Test hooks (environment, read once here: utils/training/hooks.py):
``SSD_TEST_INJECT_NAN_AT=5`` or ``5,6`` or ``5-9`` makes the loss of those iterations NaN;
``SSD_TEST_SAVE_DELAY=0.2`` sleeps inside each checkpoint write (before the rename).
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple

import torch

from utils.cli import (Parser, batch_size, check_writable_folder, float_in, non_negative_int, positive_float,
                       positive_int, str2bool)
from utils.device import resolve_device
from utils.errors import UserError, run_cli
from utils.training.budget import MEASURE_ITERATIONS, SKIP_ITERATIONS
from utils.training.distributed import cleanup_distributed, init_distributed, process_device
from utils.training.hooks import TestHooks
from utils.training.pretrained import PretrainedSource
from utils.training.resume import ResumeSource, resolve_resume_path
from utils.training.settings import (AUTO, DATASETS, DEFAULTS, PRESET_NAMES, cpu_bf16, resolve_settings,
                                     validate)
from utils.training.trainer import train

# setting -> the shared validator (utils/cli.py) of its range: the flag's argparse type= (so a bad value fails at
# parse time, worded "--flag must be ..., got X") and, for the value finally chosen (a preset or a resumed
# checkpoint can set it too), the check of utils.training.settings.validate — one definition per rule.
RANGES: Dict[str, Callable[[Any], Any]] = {
    "batch_size": batch_size, "num_workers": non_negative_int, "width": float_in(0, 4, low_open=True),
    "lr": positive_float, "max_iter": positive_int, "warmup": non_negative_int, "max_nonfinite": positive_int,
    "start_iter": non_negative_int, "threads": positive_int, "save_every": positive_int, "log_every": positive_int,
    "eval_every": non_negative_int, "eval_batch_size": batch_size,
}


def iterations_or_auto(text: str) -> Any:
    """``--max_iter``: a number of iterations (``RANGES["max_iter"]``) or ``auto`` (fill ``--time_budget``)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return RANGES["max_iter"](text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of iterations or auto, got {text!r}") from None


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
    g.add_argument("--batch_size", type=RANGES["batch_size"], default=None,
                   help="images per process and iteration (default 32)")
    g.add_argument("--num_workers", type=RANGES["num_workers"], default=None, help="data loading processes (default 4)")

    g = p.add_argument_group("model")
    g.add_argument("--size", type=int, choices=(200, 300, 512), default=None,
                   help="input size: 300 (default), 512, or 200 (lighter, for CPU demos)")
    g.add_argument("--prior_scales", choices=("auto", "voc", "coco"), default=None,
                   help="default-box sizes: voc (smallest 0.1 of the image, the paper's VOC setting), coco (smallest "
                        "0.07, the paper's COCO setting: better for small objects); auto (default) = coco for "
                        "--dataset COCO, else voc")
    g.add_argument("--width", type=RANGES["width"], default=None,
                   help="channel multiplier of VGG and extras (default 1.0 = the paper; 0.25 for CPU demos)")
    g.add_argument("--batch_norm", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm after every conv (for training from scratch; default off = the paper)")
    g.add_argument("--stem", choices=("vgg", "s2"), default=None,
                   help="vgg (default, the paper) or s2: conv1_1 a 7x7 stride-2 conv and no pool1, so the first "
                        "block runs at half resolution (CPU demos; from scratch only)")
    g.add_argument("--basenet", default=None,
                   help="ImageNet VGG-16 weights (vgg16_reducedfc.pth), looked up in --save_folder or as a path, "
                        "else a registry name (vgg16-reducedfc, vgg16-imagenet: downloaded once); 'none' trains "
                        "from scratch. Default: vgg16_reducedfc.pth for the paper's model, none with "
                        "--width/--batch_norm")
    g.add_argument("--pretrained", default=None, metavar="NAME|PATH",
                   help="fine-tune: start a new run from a trained SSD of any class set (a file, or a name of "
                        "python -m weights list, e.g. ssd300-coco). Its architecture is used; every layer but the "
                        "class heads is loaded, and the head rows of classes whose names match the dataset's "
                        "(case-insensitive, VOC/COCO synonyms) and of the background; the other classes start "
                        "from scratch. Prints which classes were transferred")
    g.add_argument("--freeze", choices=("auto", "none", "conv1", "conv2", "conv3"), default=None,
                   help="VGG blocks kept fixed (no update, no backward through them). auto (default): conv2 "
                        "(conv1_1..conv2_2, as the original Caffe SSD) when pre-trained weights are loaded "
                        "(--basenet, --pretrained or a bare --resume), none from scratch. ssd.pytorch trained "
                        "all: --freeze none")
    g.add_argument("--sync_bn", action="store_true", default=None,
                   help="with --batch_norm under torchrun on GPUs: synchronise BatchNorm statistics across GPUs")

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="sgd (default, the paper: momentum, weight decay on all) or adamw (no decay on BN/bias)")
    # (type=float: argparse would name a bad value "--learning-rate"; validate checks it as "--lr" with RANGES)
    g.add_argument("--lr", "--learning-rate", type=float, default=None, help="base learning rate (default 1e-3)")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    g.add_argument("--weight_decay", type=float, default=None, help="weight decay (default 5e-4)")
    g.add_argument("--gamma", type=float, default=None, help="step decay factor at each --lr_steps (default 0.1)")
    g.add_argument("--lr_schedule", choices=("step", "cosine"), default=None,
                   help="step (default: x gamma at --lr_steps) or cosine (to 0 at --max_iter)")
    g.add_argument("--lr_steps", nargs="+", default=None,
                   help="iterations where the LR is multiplied by gamma (default from the dataset config, "
                        "VOC 80000 100000 120000)")
    g.add_argument("--max_iter", type=iterations_or_auto, default=None,
                   help="iterations to train (default from the dataset config: VOC 120000, COCO 400000), or auto "
                        "with --time_budget: as many as the budget holds at the speed measured over iterations "
                        f"{SKIP_ITERATIONS + 1}-{SKIP_ITERATIONS + MEASURE_ITERATIONS}, with the LR schedule over "
                        "that many (printed, and kept by --resume)")
    g.add_argument("--warmup", type=RANGES["warmup"], default=None,
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
    g.add_argument("--max_nonfinite", type=RANGES["max_nonfinite"], default=None,
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
    g.add_argument("--start_iter", type=RANGES["start_iter"], default=None,
                   help="iteration to start at when --resume is a bare state_dict (default 0)")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--cuda", type=str2bool, default=None,
                   help="ssd.pytorch's flag, still accepted: false forces the CPU with --device auto")
    g.add_argument("--threads", type=RANGES["threads"], default=None,
                   help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--save_folder", default=None, help="where checkpoints and logs go (default weights/)")
    g.add_argument("--save_every", type=RANGES["save_every"], default=None,
                   help="checkpoint every N iterations (default 5000)")
    g.add_argument("--log_every", type=RANGES["log_every"], default=None, help="log every N iterations (default 10)")
    g.add_argument("--eval_every", type=RANGES["eval_every"], default=None,
                   help="every N iterations compute mAP on --eval_split and log it (default 0 = never)")
    g.add_argument("--eval_split", default=None,
                   help="held-out split for --eval_every (default: VOC 2007 test, COCO minival2014, custom val)")
    g.add_argument("--eval_metric", choices=("voc07", "area"), default=None,
                   help="metric of --eval_every: voc07 (default, the 11-point VOC2007 mAP) or area (VOC2010+); "
                        "COCO datasets always get COCO AP@[.5:.95]")
    g.add_argument("--eval_batch_size", type=RANGES["eval_batch_size"], default=None,
                   help="batch size of --eval_every (default 16)")
    g.add_argument("--time_budget", type=float, default=None,
                   help="stop (and save) after this many seconds of training; the schedule is still over --max_iter "
                        "(--max_iter auto fits it to the budget)")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns, explicit = parse_args(argv)
    if ns.pretrained and ns.resume:
        raise UserError("--pretrained starts a new run from a trained model and --resume continues a run — give "
                        "one (a fine-tuning run continues with --resume alone: its checkpoints keep the rest)", code=2)
    pretrained = PretrainedSource.open(ns.pretrained) if ns.pretrained else None
    resume: Optional[ResumeSource] = None
    if ns.resume:
        # `--resume latest` looks for ssd{size}_{dataset}_* in --save_folder: those three come from the flags
        path = resolve_resume_path(ns.resume, ns.save_folder or DEFAULTS["save_folder"],
                                   ns.size or DEFAULTS["size"], ns.dataset or DEFAULTS["dataset"])
        resume = ResumeSource.open(path)

    device = resolve_device(ns.device if ns.device is not None else DEFAULTS["device"], ns.cuda)
    s = resolve_settings(ns, explicit, resume.config if resume else None, device.type == "cuda" or cpu_bf16(),
                         device.type, pretrained.config if pretrained else None)
    validate(s, RANGES)
    check_writable_folder(s.save_folder, "--save_folder")
    if s.threads:
        torch.set_num_threads(s.threads)
    hooks = TestHooks.from_env(os.environ)

    dist = init_distributed(device.type)
    try:
        return train(s, explicit, process_device(device, dist), dist, resume, hooks, pretrained)
    finally:
        cleanup_distributed(dist)


if __name__ == "__main__":
    run_cli(main)
