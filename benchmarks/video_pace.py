"""Does object_detection.py keep pace with the model? (issue 19: the pipeline ≥ 0.9× of model-only)

    python -m benchmarks.video_pace [--weights CKPT] [--backend openvino] [--precision int8] [--frames 288]
        [--size 500x375] [--batch 8] [--threads N] [--reps 3] [--sound] [--json PATH] [--quick]

Same process, same predictor, same frames:

* **model only** — ``predictor.predict`` over the decoded frames in batches (pre-processing, network, Detect,
  pixels): what the model alone can do on this machine;
* **pipeline** — :func:`utils.media.detect.detect_video`, i.e. object_detection.py's decode → batch → predict →
  draw → H.264 encode (→ sound) with the JSON log;
* for OpenVINO, the same two with every batch in one request (``streams=1``, latency mode) for comparison;
* **decode** and **encode** alone (ffmpeg without the model), so the share the video work takes is visible.

Model only and pipeline alternate (``--reps`` pairs after one warm-up of each) and the ratio is the median of the
per-pair ratios, so a host whose speed drifts affects both alike; each stage also reports its CPU time per frame
(this process and the ffmpeg processes), which shows what the video work adds when the cores are saturated. The
model (without ``--weights``) is a seeded random faithful SSD300 with 21 classes, exported and calibrated as in
:mod:`benchmarks.cpu_backends`. The output names the machine (CPU, threads, ISA features). ``--quick``: width-1/8
model, 24 frames, one rep — a smoke test, not a measurement.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cpu_backends import open_backend, prepare_files  # noqa: E402
from benchmarks.machine import machine_info, machine_summary, write_report  # noqa: E402
from data.synthetic import generate_video  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.inference import Predictor  # noqa: E402
from utils.inference.openvino_runner import OpenVinoRunner  # noqa: E402
from utils.media.detect import detect_video  # noqa: E402
from utils.media.video_reader import VideoReader  # noqa: E402
from utils.media.video_writer import VideoWriter  # noqa: E402

def measure(fn: Callable[[], Any], reps: int, warmup: int = 1) -> Tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process + the ffmpeg children it waited for) per call."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(reps):
        c0, t0 = _cpu_seconds(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_seconds() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def report_stage(stage: str, n: int, wall: float, cpu: float) -> None:
    print(f"{stage:<20} {n / wall:8.2f} frames/s   CPU {1000 * cpu / n:7.1f} ms/frame", flush=True)


DEFAULT_FRAMES = 288
SHORT = {"torch": "torch", "onnxruntime": "ort", "openvino": "ov"}


def variants(args: argparse.Namespace, files: Dict[str, str]) -> Dict[str, Predictor]:
    """The predictors compared: the backend as the CLIs open it; for OpenVINO also one stream per batch (its
    latency mode, how batches ran before they were split across streams) unless ``--no_one_stream``."""
    name = f"{SHORT[args.backend]}-{args.precision}"
    preds = {"default": open_backend(name, files, args.threads)}
    if args.backend == "openvino" and not args.no_one_stream:
        runner = OpenVinoRunner(files["int8" if args.precision == "int8" else "fp32"], args.precision,
                                args.threads, streams=1)
        preds["one_stream"] = Predictor(runner, runner.class_names, runner.size)
    return preds


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {args.size!r}: use WIDTHxHEIGHT, e.g. 500x375", code=2) from None
    info = machine_info()
    print(machine_summary(info), flush=True)
    with tempfile.TemporaryDirectory(prefix="video_pace_") as tmp:
        files = prepare_files(tmp, args.weights, None, 16, args.width, False, args.precision == "int8")
        preds = variants(args, files)
        video = os.path.join(tmp, "in.mp4")
        generate_video(video, args.frames, 24, width, height, seed=0, audio=args.sound)
        decoded = list(VideoReader(video))
        n = len(decoded)

        def model_only(pred: Predictor) -> None:
            for i in range(0, n, args.batch):
                pred.predict(decoded[i:i + args.batch])

        def pipeline(pred: Predictor) -> None:
            detect_video(pred, VideoReader(video), os.path.join(tmp, "out.mp4"), threshold=args.threshold,
                         batch_size=args.batch, audio=args.sound, json_path=os.path.join(tmp, "out.json"),
                         progress=False)

        def decode_only() -> None:
            for _ in VideoReader(video):
                pass

        def encode_only() -> None:
            with VideoWriter(os.path.join(tmp, "enc.mp4"), width, height, 24) as w:
                for f in decoded:
                    w.write(f)

        stages: Dict[str, Dict[str, float]] = {}
        for stage, fn in (("decode", decode_only), ("encode", encode_only)):
            wall, cpu = measure(fn, args.reps)
            stages[stage] = {"fps": n / wall, "cpu_ms_per_frame": 1000 * cpu / n}
            report_stage(stage, n, wall, cpu)
        for pred in preds.values():  # warm-up (compiles OpenVINO's graphs)
            model_only(pred), pipeline(pred)
        # model only and pipeline alternate, so a machine that drifts (shared hosts do) affects both alike
        runs: Dict[str, List[List[Tuple[float, float]]]] = {k: [] for k in preds}
        for _ in range(args.reps):
            for key, pred in preds.items():
                pair = [measure(lambda: model_only(pred), 1, warmup=0), measure(lambda: pipeline(pred), 1, warmup=0)]
                report_stage(f"{key} model", n, *pair[0])
                report_stage(f"{key} pipeline", n, *pair[1])
                runs[key].append(pair)
    results: Dict[str, Any] = {}
    for key, pairs in runs.items():
        ratios = sorted(m[0] / p[0] for m, p in pairs)
        results[key] = {
            "model_only_fps": n / statistics.median(m[0] for m, _ in pairs),
            "pipeline_fps": n / statistics.median(p[0] for _, p in pairs),
            "cpu_ms_per_frame": {"model_only": 1000 * statistics.median(m[1] for m, _ in pairs) / n,
                                 "pipeline": 1000 * statistics.median(p[1] for _, p in pairs) / n},
            "ratio": statistics.median(ratios), "ratios": ratios}
        if hasattr(preds[key].model, "describe"):
            results[key]["runtime"] = preds[key].model.describe()
        pairs_text = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"{key}: pipeline / model only {results[key]['ratio']:.3f} (pairs {pairs_text}; target >= 0.9)")
    settings = {"backend": args.backend, "precision": args.precision, "batch": args.batch, "frames": n,
                "size": f"{width}x{height}", "sound": args.sound, "threads": args.threads, "reps": args.reps,
                "weights": args.weights, "width": args.width}
    return {"machine": info, "machine_summary": machine_summary(info), "settings": settings, "stages": stages,
            "results": results}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.video_pace", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="checkpoint to export (default: random SSD300, 21 classes)")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"), default="openvino")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="int8")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    p.add_argument("--size", default="500x375", help="video size WIDTHxHEIGHT")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--threshold", type=float, default=0.6, help="drawing threshold (object_detection.py's default)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no_one_stream", action="store_true", help="OpenVINO: skip the one-stream comparison")
    p.add_argument("--sound", action="store_true", help="give the video a sound track (muxed into the output)")
    p.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the result (with the machine description) here")
    p.add_argument("--quick", action="store_true", help="smoke test: width-1/8 model, 24 frames unless given, one rep")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.width, args.reps = 0.125, 1
        args.frames = 24 if args.frames == DEFAULT_FRAMES else args.frames
    report = run(args)
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    run_cli(main)
