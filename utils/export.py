"""``python -m utils.export MODEL --format onnx|torchscript -o FILE [--int8 --calib DATASET_DIR]``: the export
command.

Flags in, one line per outcome out; the export itself (graphs, metadata, the check against PyTorch) is
:mod:`utils.deploy.export`, the calibrated int8 quantization :mod:`utils.deploy.quantize`.

There is no ``--format openvino``: OpenVINO reads the ``.onnx`` file directly (``--backend openvino``), so one
file serves ONNX Runtime and OpenVINO, fp32 or int8; converting it to OpenVINO's IR first gives the same compiled
model (an IR ``.xml`` saved from it with ``openvino.save_model`` is accepted too).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from ssd import SSD
from utils.cli import Parser
from utils.deploy.export import CHECK_TOLERANCE, DEFAULT_OPSET, MIN_OPSET, check_export, export_onnx, \
    export_torchscript
from utils.deploy.quantize import DEFAULT_CALIB_IMAGES, export_int8
from utils.errors import UserError, run_cli
from utils.labels import read_class_names
from utils.loading.checkpoint import load_model
from utils.loading.names import resolve_class_names
from weights.hub import resolve_model_path


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
    p = Parser("-m utils.export", description="Export an SSD checkpoint to ONNX (for ONNX Runtime and OpenVINO, "
                                               "fp32 or calibrated int8) or TorchScript.")
    p.add_argument("model", help="checkpoint (.pth): ssd.pytorch weights, a training checkpoint, or a pretrained model name (python -m weights list)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx runs on ONNX Runtime and on OpenVINO (eval.py / object_detection.py --backend "
                        "onnxruntime|openvino read the same .onnx; no separate OpenVINO format is needed)")
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
    p.add_argument("--int8", action="store_true",
                   help="write a statically quantized int8 ONNX file (per-channel int8 weights, uint8 activations, "
                        "first conv kept fp32), calibrated on --calib images; run it with --precision int8")
    p.add_argument("--calib", default=None, metavar="DATASET_DIR",
                   help="--int8: dataset folder whose images calibrate the activation ranges (a custom dataset "
                        "with labels.txt, or a VOCdevkit)")
    p.add_argument("--calib_images", "--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, metavar="N",
                   help="--int8: calibration images, spread evenly over the dataset's first split found "
                        "(trainval, train, val, test)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing the exported file against PyTorch on one random batch")
    return p


def _check_settings(args: argparse.Namespace) -> None:
    for flag, value in (("--top-k", args.top_k), ("--opset", args.opset)):
        if value < 1:
            raise UserError(f"{flag} must be positive, got {value}", code=2)
    if not 0 < args.nms_thresh <= 1 or not 0 <= args.conf_thresh < 1:
        raise UserError("--nms-thresh must be in (0, 1] and --conf-thresh in [0, 1)", code=2)
    if args.int8:
        if args.format != "onnx":
            raise UserError("--int8 writes an ONNX file (run by onnxruntime or openvino); drop --format "
                            f"{args.format}", code=2)
        if not args.calib:
            raise UserError("--int8 needs --calib DATASET_DIR: images to calibrate the int8 ranges on", code=2)
        if args.calib_images < 1:
            raise UserError(f"--calib_images must be at least 1, got {args.calib_images}", code=2)
        if not os.path.isdir(args.calib):  # before the export, not after it
            raise UserError(f"--calib folder not found: {args.calib} — give a dataset folder (labels.txt, "
                            "JPEGImages/, ImageSets/Main/) or a VOCdevkit", code=2)
    elif args.calib:
        raise UserError("--calib is for --int8 exports; add --int8 (or drop --calib)", code=2)


def _report_check(args: argparse.Namespace, model: SSD) -> int:
    """Compare the written file with PyTorch; 1 when they differ by more than CHECK_TOLERANCE."""
    try:
        diff = check_export(model, args.output, args.format, args.batch)
    except UserError as exc:  # e.g. onnxruntime missing: the file is written, only the check is skipped
        print(f"check skipped: {exc.message}", file=sys.stderr)
        return 0
    if args.int8:  # quantization moves outputs by design: the number is for information, accuracy is mAP
        print(f"check (int8, informational): max relative difference vs fp32 PyTorch {diff:.2e} on a random "
              f"batch; measure the accuracy with python eval.py --trained_model {args.output} --backend openvino "
              "--precision int8 (or --backend onnxruntime) against the fp32 model's mAP")
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
    args.model = resolve_model_path(args.model)  # a model name (ssd300-coco, ...) -> its cached file; a path wins
    model, meta = load_model(args.model, "test", size=args.size, top_k=args.top_k, conf_thresh=args.conf_thresh,
                             nms_thresh=args.nms_thresh)
    given = read_class_names(args.class_names, what="class names file", code=2) if args.class_names else None
    names = resolve_class_names(given, meta["class_names"], model.num_classes, args.class_names or args.model)
    fmt = args.format
    if args.int8:
        written = export_int8(model, args.output, names, args.calib, args.calib_images, args.with_nms, args.batch,
                              args.opset)
        fmt = f"onnx int8, calibrated on {json.loads(written['quantization'])['calib_images']} images of {args.calib}"
    elif args.format == "onnx":
        export_onnx(model, args.output, names, args.with_nms, args.batch, args.opset)
    else:
        export_torchscript(model, args.output, names, args.with_nms, args.batch)
    kind = "detections [B, C, top_k, 5]" if args.with_nms else "loc, scores, priors"
    print(f"wrote {args.output} ({fmt}, SSD{model.size}, {model.num_classes} classes, "
          f"batch {args.batch or 'dynamic'}, outputs: {kind})")
    return 0 if args.no_check else _report_check(args, model)


if __name__ == "__main__":
    run_cli(main)
