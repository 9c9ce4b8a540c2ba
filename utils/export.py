"""``python -m utils.export MODEL --format onnx|torchscript -o FILE``: the export command.

Flags in, one line per outcome out; the export itself (graphs, metadata, the check against PyTorch) is
:mod:`utils.deploy.export`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ssd import SSD
from utils.cli import Parser
from utils.deploy.export import CHECK_TOLERANCE, DEFAULT_OPSET, MIN_OPSET, check_export, export_onnx, \
    export_torchscript
from utils.errors import UserError, run_cli
from utils.labels import read_class_names
from utils.loading.checkpoint import load_model
from utils.loading.names import resolve_class_names


def _parse_batch(value: str) -> Optional[int]:
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or a positive integer, got {value!r}") from None
    if batch < 1:
        raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or a positive integer, got {value!r}")
    return batch


def build_parser() -> argparse.ArgumentParser:
    p = Parser("-m utils.export", description="Export an SSD checkpoint to ONNX or TorchScript.")
    p.add_argument("model", help="checkpoint (.pth): ssd.pytorch weights or a training checkpoint")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("-o", "--output", required=True, help="file to write (.onnx / .pt)")
    p.add_argument("--size", type=int, choices=(200, 300, 512), default=None,
                   help="input size; must match the checkpoint (default: read from it)")
    p.add_argument("--batch", type=_parse_batch, default=None, metavar="dynamic|N",
                   help="batch size of the exported graph (default: dynamic)")
    p.add_argument("--with-nms", action="store_true",
                   help="put decoding + per-class NMS in the graph: output detections [B, C, top_k, 5]")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--top-k", type=int, default=200, help="detections kept per class (Detect's top_k)")
    p.add_argument("--conf-thresh", type=float, default=0.01, help="per-class score threshold before NMS")
    p.add_argument("--nms-thresh", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--class-names", default=None,
                   help="text file with one class name per line (default: the checkpoint's, else VOC/COCO/class_N)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing the exported file against PyTorch on one random batch")
    return p


def _check_settings(args: argparse.Namespace) -> None:
    for flag, value in (("--top-k", args.top_k), ("--opset", args.opset)):
        if value < 1:
            raise UserError(f"{flag} must be positive, got {value}", code=2)
    if not 0 < args.nms_thresh <= 1 or not 0 <= args.conf_thresh < 1:
        raise UserError("--nms-thresh must be in (0, 1] and --conf-thresh in [0, 1)", code=2)


def _report_check(args: argparse.Namespace, model: SSD) -> int:
    """Compare the written file with PyTorch; 1 when they differ by more than CHECK_TOLERANCE."""
    try:
        diff = check_export(model, args.output, args.format, args.batch)
    except UserError as exc:  # e.g. onnxruntime missing: the file is written, only the check is skipped
        print(f"check skipped: {exc.message}", file=sys.stderr)
        return 0
    print(f"check: max relative difference vs PyTorch {diff:.2e} on a random batch")
    if diff > CHECK_TOLERANCE:
        what = ("a detection score/IoU right at a threshold can flip" if args.with_nms
                else "the runtime computes the network differently")
        print(f"check failed: {args.output} differs from PyTorch by more than {CHECK_TOLERANCE:g} "
              f"(relative); {what} — compare the detections before deploying it", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _check_settings(args)
    model, meta = load_model(args.model, "test", size=args.size, top_k=args.top_k, conf_thresh=args.conf_thresh,
                             nms_thresh=args.nms_thresh)
    given = read_class_names(args.class_names, what="class names file", code=2) if args.class_names else None
    names = resolve_class_names(given, meta["class_names"], model.num_classes, args.class_names or args.model)
    if args.format == "onnx":
        export_onnx(model, args.output, names, args.with_nms, args.batch, args.opset)
    else:
        export_torchscript(model, args.output, names, args.with_nms, args.batch)
    kind = "detections [B, C, top_k, 5]" if args.with_nms else "loc, scores, priors"
    print(f"wrote {args.output} ({args.format}, SSD{model.size}, {model.num_classes} classes, "
          f"batch {args.batch or 'dynamic'}, outputs: {kind})")
    return 0 if args.no_check else _report_check(args, model)


if __name__ == "__main__":
    run_cli(main)
