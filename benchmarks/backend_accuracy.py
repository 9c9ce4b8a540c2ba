"""VOC07 mAP of one trained model on every backend × precision (issue 19 item 4), through the CLIs' own code.

    python -m benchmarks.backend_accuracy --weights quickstart_out/weights/ssd300_custom_final.pth \\
        --data quickstart_out/data --json benchmarks/results/backend_accuracy.json

Exports the checkpoint to fp32 ONNX and to calibrated int8 ONNX (``--calib_images`` images of the training split,
as ``python -m utils.export MODEL --int8 --calib DIR`` does), then evaluates torch fp32/bf16, ONNX Runtime
fp32/int8 and OpenVINO fp32/bf16/int8 on the ``--set`` split with :func:`utils.metrics.evaluation.evaluate_model`.
Combinations this CPU cannot run are recorded with the reason. Prints one table and writes JSON naming the machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.machine import machine_info, machine_summary, write_report
from data import build_dataset
from utils.deploy.export import export_onnx
from utils.deploy.quantize import export_int8
from utils.errors import UserError
from utils.inference import open_predictor
from utils.loading.checkpoint import load_model
from utils.metrics.evaluation import evaluate_model

COMBINATIONS = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))


def export_files(weights: str, calib_dir: str, calib_images: int, folder: str) -> Dict[str, str]:
    """fp32 and int8 ONNX files of ``weights`` in ``folder``."""
    model, meta = load_model(weights, "test")
    names = meta["class_names"]
    files = {"checkpoint": weights, "fp32": os.path.join(folder, "model.onnx"),
             "int8": os.path.join(folder, "model_int8.onnx")}
    export_onnx(model, files["fp32"], names)
    export_int8(model, files["int8"], names, calib_dir, calib_images)
    return files


def evaluate_all(files: Dict[str, str], data: str, set_name: str, batch_size: int,
                 combos: Sequence[Sequence[str]] = COMBINATIONS) -> List[Dict[str, Any]]:
    dataset = build_dataset("custom", data, set_name, transform=None, keep_difficult=True)
    rows = []
    for backend, precision in combos:
        path = files["checkpoint"] if backend == "torch" else files["int8" if precision == "int8" else "fp32"]
        row: Dict[str, Any] = {"backend": backend, "precision": precision}
        try:
            predictor = open_predictor(path, backend, precision=precision)
            result = evaluate_model(predictor, dataset, batch_size, set_name=set_name)
        except UserError as exc:
            row["skipped"] = exc.message
        else:
            row.update(mAP=result["mAP"], ap=result["ap"], images_per_second=result["images_per_second"])
        rows.append(row)
        print(format_row(row, rows[0].get("mAP")), flush=True)
    return rows


def format_row(row: Dict[str, Any], reference: Optional[float]) -> str:
    if "skipped" in row:
        return f"| {row['backend']} | {row['precision']} | skipped: {row['skipped']} | | |"
    delta = "" if reference is None else f"{100 * (row['mAP'] - reference):+.2f}"
    return (f"| {row['backend']} | {row['precision']} | {row['mAP']:.4f} | {delta} | "
            f"{row['images_per_second']:.1f} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="trained checkpoint")
    p.add_argument("--data", required=True, help="custom (VOC-layout) dataset folder with labels.txt")
    p.add_argument("--set", default="test", help="split to evaluate")
    p.add_argument("--calib_images", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    print(machine_summary())
    print("| backend | precision | VOC07 mAP | vs torch fp32 (points) | img/s (eval loop, batch "
          f"{args.batch_size}) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        files = export_files(args.weights, args.data, args.calib_images, folder)
        rows = evaluate_all(files, args.data, args.set, args.batch_size)
    if args.json:
        write_report(args.json, {"machine": machine_info(), "weights": args.weights, "data": args.data,
                                 "set": args.set, "calib_images": args.calib_images, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
