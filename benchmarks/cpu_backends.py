"""CPU backends × precisions, end to end, against torchvision's ssd300_vgg16 in the same run (issue 19).

    python -m benchmarks.cpu_backends [--weights CKPT] [--calib DATASET_DIR] [--batches 1,8] [--reps 5]
        [--threads N] [--backends torch-fp32,torch-bf16,ort-fp32,ort-int8,ov-fp32,ov-bf16,ov-int8]
        [--nms detect|graph] [--json benchmarks/results/cpu_backends.json] [--quick]

Every backend goes through the shared :class:`utils.inference.predictor.Predictor`: uint8 frames (500x375) →
resize + mean subtraction → network → Detect (or the graph's NMS with ``--nms graph``) → detections in pixels.
Per backend and batch it reports the end-to-end img/s, the network-only img/s (PyTorch ``forward_raw``; the
exported graph's ``outputs`` — network + softmax — for ONNX Runtime / OpenVINO) and the gap between them
(pre-processing + Detect + pixels, as a share of the end-to-end time), and the speed-up over torchvision fp32 at
the same batch. Figures are medians of ``--reps`` timed runs after one warm-up; all in one process, one thread
count; network-only and end-to-end calls alternate, so a host whose speed drifts affects both alike. The JSON
names the machine (:func:`benchmarks.machine.machine_info`): CPU model, cores, threads, AMX /
AVX-512 bf16 / VNNI / AVX2.

Without ``--weights`` the model is a seeded random SSD300 (21 classes; speed does not depend on the weights);
without ``--calib`` the int8 models are calibrated on a synthetic dataset written to the work folder. Precisions
this CPU cannot run natively are skipped with the reason (e.g. bf16 without avx512_bf16/amx_bf16). ``--quick``:
a width-1/8 model, batches 1 and 2, one rep — a smoke test of the script, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.machine import machine_info, machine_summary, write_report  # noqa: E402
from benchmarks.timing import make_frames, timeit, timeit_alternating  # noqa: E402
from data.synthetic import generate_dataset  # noqa: E402
from utils.cpu import precision_problem  # noqa: E402
from utils.deploy.export import export_onnx  # noqa: E402
from utils.deploy.quantize import quantize_onnx  # noqa: E402
from utils.device import autocast  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.inference import Predictor, open_predictor  # noqa: E402
from utils.loading.checkpoint import load_model, save_checkpoint  # noqa: E402
from utils.loading.config import ModelConfig  # noqa: E402

DEFAULT_BATCHES = "1,8"
BACKENDS = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "ov-fp32", "ov-bf16", "ov-int8")
# issue 19's targets, end to end vs torchvision fp32 (informational: printed and stored, never asserted)
TARGETS = {"fp32_best": 1.4, "amx": {"int8": 10.0, "bf16": 5.0}, "avx512_vnni": {"int8": 3.0}}


# ---------------------------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------------------------

def prepare_files(workdir: str, weights: Optional[str], calib: Optional[str], calib_images: int, width: float,
                  with_nms: bool, need_int8: bool) -> Dict[str, str]:
    """Checkpoint (given or random), its fp32 ONNX export and (if needed) the calibrated int8 one."""
    files = {"checkpoint": weights or os.path.join(workdir, "random_ssd300.pth")}
    if not weights:
        torch.manual_seed(0)
        config = ModelConfig(300, 21, width, False, "vgg", "VOC")
        save_checkpoint({"model": config.build("train").state_dict(), "config": config.to_dict(),
                         "class_names": [f"c{i}" for i in range(1, 21)]}, files["checkpoint"])
    model, meta = load_model(files["checkpoint"], "test")
    names = meta["class_names"] or [f"c{i}" for i in range(1, model.num_classes)]
    files["fp32"] = os.path.join(workdir, "fp32.onnx")
    export_onnx(model, files["fp32"], names, with_nms)
    if need_int8:
        if not calib:
            calib = os.path.join(workdir, "calib_data")
            if not os.path.isdir(calib):
                generate_dataset(calib, max(calib_images, 2), seed=0)
        files["int8"] = os.path.join(workdir, "int8.onnx")
        quantize_onnx(files["fp32"], files["int8"], calib, calib_images)
    return files


RUNTIMES = {"torch": "torch", "ort": "onnxruntime", "ov": "openvino"}


def open_backend(name: str, files: Dict[str, str], threads: int) -> Predictor:
    """A Predictor for ``name`` (one of :data:`BACKENDS`) through :func:`utils.inference.open_predictor`, as the
    CLIs open it (``--backend R --precision P --threads N``); UserError when it cannot run here."""
    runtime, precision = name.split("-")
    if runtime == "torch":
        # the benchmark skips what would not run natively (open_predictor only warns for PyTorch bf16)
        why = precision_problem("bf16") if precision == "bf16" else None
        if why:
            raise UserError(why)
        path = files["checkpoint"]
    else:
        path = files["int8" if precision == "int8" else "fp32"]
    return open_predictor(path, RUNTIMES[runtime], precision=precision, threads=threads)


# ---------------------------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------------------------

def bench_predictor(pred: Predictor, frames: List[np.ndarray], batch: int, reps: int) -> Dict[str, float]:
    """End to end (``predict`` on uint8 frames) and network only, img/s; gap = share of e2e time outside it."""
    imgs = frames[:batch]
    x = pred.preprocess(imgs)
    if isinstance(pred.model, torch.nn.Module):
        xn = x.contiguous(memory_format=torch.channels_last) if pred.channels_last else x

        def network():
            with torch.inference_mode(), autocast(pred.device, pred.amp):
                loc, conf = pred.model.forward_raw(xn)
                return torch.softmax(conf.float(), -1)
    else:
        def network():
            return pred.model.outputs(x)
    # alternated, one call each per round: a host whose speed drifts during the measurement affects both alike
    t_net, t_e2e = timeit_alternating([network, lambda: pred.predict(imgs)], reps)
    return {"e2e_img_s": batch / t_e2e, "network_img_s": batch / t_net, "gap": max(0.0, 1.0 - t_net / t_e2e)}


def bench_torchvision(frames: List[np.ndarray], batch: int, reps: int) -> Dict[str, float]:
    """torchvision's ssd300_vgg16 (random weights, 21 classes) end to end: uint8 frames → boxes in pixels."""
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()
    imgs = frames[:batch]

    def run():
        with torch.inference_mode():
            return model([torch.from_numpy(f).permute(2, 0, 1).float().div_(255) for f in imgs])

    return {"e2e_img_s": batch / timeit(run, torch.device("cpu"), reps)}


def target_check(results: Dict[str, Any], batches: List[int], isa: Dict[str, bool]) -> Dict[str, Any]:
    """Issue 19's speed targets vs what was measured at the largest batch (informational)."""
    b = max(batches)
    ratio = {name: r.get("vs_torchvision") for name, r in results.get(f"b{b}", {}).items()
             if isinstance(r, dict) and r.get("vs_torchvision")}
    best = lambda prec: max((v for k, v in ratio.items() if k.endswith(prec)), default=None)  # noqa: E731
    out: Dict[str, Any] = {"batch": b, "fp32_best": best("fp32"), "fp32_target": TARGETS["fp32_best"]}
    tier = "amx" if isa.get("amx_int8") else "avx512_vnni" if isa.get("avx512_vnni") else None
    if tier:
        for prec, target in TARGETS[tier].items():
            out[f"{prec}_best"], out[f"{prec}_target"] = best(prec), target
    out["max_gap"] = max((r["gap"] for r in results.get(f"b{b}", {}).values() if isinstance(r, dict) and "gap" in r),
                         default=None)
    out["gap_target"] = 0.10
    return out


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend(s) {', '.join(unknown)}; use {', '.join(BACKENDS)}", code=2)
    batches = [int(b) for b in args.batches.split(",")]
    info = machine_info()
    print(machine_summary(info), flush=True)
    frames = make_frames(max(batches))
    with tempfile.TemporaryDirectory(prefix="cpu_backends_") as tmp:
        files = prepare_files(args.workdir or tmp, args.weights, args.calib, args.calib_images, args.width,
                              args.nms == "graph", any(b.endswith("int8") for b in backends))
        preds: Dict[str, Any] = {}
        for name in backends:
            try:
                preds[name] = open_backend(name, files, args.threads)
            except UserError as exc:
                preds[name] = f"skipped: {exc.message}"
        results: Dict[str, Any] = {}
        for b in batches:
            row: Dict[str, Any] = {}
            if not args.no_torchvision:
                row["torchvision-fp32"] = bench_torchvision(frames, b, args.reps)
            for name, pred in preds.items():
                row[name] = bench_predictor(pred, frames, b, args.reps) if not isinstance(pred, str) else pred
                if hasattr(getattr(pred, "model", None), "describe"):  # OpenVINO: the precision it really ran
                    row[name]["runtime"] = pred.model.describe()
                tv = row.get("torchvision-fp32", {}).get("e2e_img_s")
                if tv and isinstance(row[name], dict):
                    row[name]["vs_torchvision"] = row[name]["e2e_img_s"] / tv
                print(f"b{b} {name:<17}" + (f"e2e {row[name]['e2e_img_s']:8.2f} img/s  network "
                      f"{row[name]['network_img_s']:8.2f}  gap {row[name]['gap']:5.1%}  "
                      f"x{row[name].get('vs_torchvision', float('nan')):.2f} vs torchvision"
                      if isinstance(row[name], dict) else row[name]), flush=True)
            results[f"b{b}"] = row
    settings = {k: v for k, v in vars(args).items() if k not in ("json",)}
    report = {"machine": info, "machine_summary": machine_summary(info), "settings": settings, "results": results,
              "targets": target_check(results, batches, info["isa"])}
    print("targets:", json.dumps(report["targets"]))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_backends", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="checkpoint to export (default: random SSD300, 21 classes)")
    p.add_argument("--calib", default=None, help="dataset folder for int8 calibration (default: synthetic)")
    p.add_argument("--calib_images", type=int, default=32)
    p.add_argument("--batches", default=DEFAULT_BATCHES)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--nms", choices=("detect", "graph"), default="detect",
                   help="exported files: raw + PyTorch Detect (default) or --with-nms graphs")
    p.add_argument("--no_torchvision", action="store_true")
    p.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help="keep the exported files here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write the results (with the machine description) here")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: width-1/8 model, one rep, 2 calibration images, batches 1,2 unless given")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.width, args.reps, args.calib_images = 0.125, 1, 2
        args.batches = "1,2" if args.batches == DEFAULT_BATCHES else args.batches
        print("--quick: a width-1/8 model, one rep: a smoke test of the script, not a measurement (its ratios to "
              "torchvision compare models of different sizes)", flush=True)
    report = run(args)
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    run_cli(main)
