"""ONNX Runtime vs PyTorch, end to end (RGB frames → detections in pixels) through the same Predictor.

    python -m benchmarks.bench_export [--batches 1,8] [--reps 3] [--background-bias 0] [--json FILE]

Three engines on the same SSD300 (VGG-16, 21 classes, random weights) and the same frames:
``pytorch`` (the model + Detect), ``onnxruntime-raw`` (exported network on ONNX Runtime + PyTorch Detect) and
``onnxruntime-nms`` (exported with ``--with-nms``: decode + NMS inside the ONNX graph). Preprocessing is the shared
one in every case. Threads: PyTorch and ONNX Runtime get the same count (``--threads``, default torch's).

Random weights make Detect's work the worst case: every class scores about 1/21 > 0.01 at every prior, so every
class sends its full 200 candidates to NMS (4000 boxes per image). A trained model sends far fewer;
``--background-bias B`` adds B to the background logit of every prior to imitate that (most scores fall below 0.01).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from typing import Any, Dict, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.machine import write_report  # noqa: E402
from benchmarks.timing import make_frames, timeit  # noqa: E402
from ssd import build_ssd  # noqa: E402
from utils.deploy.export import export_onnx  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.inference import Predictor  # noqa: E402
from utils.inference.opener import exported_predictor  # noqa: E402
from utils.inference.runners import OnnxRunner  # noqa: E402

CPU = torch.device("cpu")


def bias_background(model: torch.nn.Module, bias: float) -> None:
    """Add ``bias`` to the background logit of every prior (conf head channel ``a * C + 0`` for anchor ``a``)."""
    with torch.no_grad():
        for head in model.conf:
            head.bias[0::model.num_classes] += bias


def run_benchmark(batches: Sequence[int] = (1, 8), reps: int = 3, warmup: int = 1, size: int = 300,
                  num_classes: int = 21, background_bias: float = 0.0,
                  threads: Optional[int] = None) -> Dict[str, Any]:
    """Images/s of each engine at each batch size (median of ``reps`` after ``warmup``). Needs onnx + onnxruntime
    (ImportError otherwise, so benchmarks/benchmark.py can skip the section)."""
    import onnxruntime as ort  # optional: ImportError skips the section in benchmarks/benchmark.py

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_ssd("test", size, num_classes).eval()
    if background_bias:
        bias_background(model, background_bias)
    names = [f"class_{i}" for i in range(1, num_classes)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    frames = make_frames(max(batches))
    result: Dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": threads,
                    "torch": torch.__version__, "onnxruntime": ort.__version__},
        "model": f"SSD{size} VGG-16, {num_classes} classes, random weights, background bias {background_bias}",
        "note": "random weights are Detect's worst case (all classes x 200 candidates go to NMS)"
                if not background_bias else "background bias imitates a trained model's sparse candidates",
        "reps": reps,
    }
    with tempfile.TemporaryDirectory() as folder:
        raw_path, nms_path = os.path.join(folder, "raw.onnx"), os.path.join(folder, "nms.onnx")
        export_onnx(model, raw_path, names, with_nms=False)
        export_onnx(model, nms_path, names, with_nms=True)
        engines = {
            "pytorch": Predictor(model, names, size, CPU),
            "onnxruntime-raw": exported_predictor(OnnxRunner(raw_path, sess_options=options)),
            "onnxruntime-nms": exported_predictor(OnnxRunner(nms_path, sess_options=options)),
        }
        for batch in batches:
            images = frames[:batch]
            for name, predictor in engines.items():
                seconds = timeit(lambda: predictor.predict(images), CPU, reps, warmup)
                detections = sum(len(d) for d in predictor.predict(images[:1]))
                result[f"{name}_b{batch}"] = {"img_s": batch / seconds, "ms_per_batch": seconds * 1e3,
                                              "detections_first_image": detections}
            base = result[f"pytorch_b{batch}"]["img_s"]
            for name in ("onnxruntime-raw", "onnxruntime-nms"):
                result[f"{name}_b{batch}"]["vs_pytorch"] = result[f"{name}_b{batch}"]["img_s"] / base
    return result


def print_table(result: Dict[str, Any], batches: Sequence[int]) -> None:
    print(f"{result['model']} | threads {result['machine']['threads']} | median of {result['reps']}")
    print(f"note: {result['note']}")
    print(f"{'engine':<18}{'batch':>6}{'img/s':>9}{'ms/batch':>10}{'vs torch':>10}{'dets/img':>10}")
    for batch in batches:
        for name in ("pytorch", "onnxruntime-raw", "onnxruntime-nms"):
            r = result[f"{name}_b{batch}"]
            print(f"{name:<18}{batch:>6}{r['img_s']:>9.2f}{r['ms_per_batch']:>10.0f}"
                  f"{r.get('vs_pytorch', 1.0):>10.2f}{r['detections_first_image']:>10}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, choices=(200, 300, 512), default=300)
    parser.add_argument("--background-bias", type=float, default=0.0,
                        help="added to the background logit (e.g. 8 to imitate a trained model's few candidates)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both engines (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    result = run_benchmark(batches, args.reps, args.warmup, args.size, background_bias=args.background_bias,
                           threads=args.threads)
    print_table(result, batches)
    if args.json:
        write_report(args.json, result)
    return 0


if __name__ == "__main__":
    run_cli(main)
