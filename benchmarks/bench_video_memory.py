"""Long-video figures for object_detection.py: peak memory vs video length, and pipeline vs model-only speed.

Memory (issue 6/9: a 10,000-frame 320x240 video within 50 MB of a 1,000-frame one)::

    python benchmarks/bench_video_memory.py memory --model weights/ssd300.pth        # the real CLI
    python benchmarks/bench_video_memory.py memory --stub                            # stub predictor: pipeline only

Each run is a fresh process (the CLI, or a stub-predictor driver); we sample its ``VmHWM`` (its own
peak RSS) and the summed RSS of its process tree (ffmpeg decoder/encoder included) from ``/proc``.
Videos are generated once (testsrc2 + noise + a sine audio track, so audio copy is exercised).

Throughput (issue 6: the whole pipeline >= 0.9x the model-only frames/s at batch 8)::

    python benchmarks/bench_video_memory.py throughput --model weights/ssd300.pth --frames 200

runs ``Predictor.predict`` alone over the decoded frames (batches of 8), then ``detect_video`` over
the same video (decode + infer + draw + encode + JSON), then the model alone again, and reports
frames/s of each and the ratio against the mean of the two model-only runs. Linux only (``/proc``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Dict, List, Optional

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.device import resolve_device  # noqa: E402  (after the path set-up: run as a script)
from utils.inference import open_predictor  # noqa: E402
from utils.media.detect import detect_video  # noqa: E402
from utils.media.ffmpeg import ffmpeg_exe  # noqa: E402
from utils.media.video_reader import VideoReader  # noqa: E402


def make_video(path: str, frames: int, width: int, height: int, fps: int = 25) -> str:
    """A synthetic video with moving content, sensor-like noise and an AAC sine track."""
    if os.path.exists(path):
        return path
    seconds = frames / fps
    tmp = path + ".part.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error",
                    "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps},noise=alls=12:allf=t",
                    "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=22050:duration={seconds}",
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", tmp], check=True)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# memory

def _proc_status(pid: int) -> Dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _children(pid: int) -> List[int]:
    kids: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return kids


def measure(cmd: List[str], interval: float = 0.1) -> Dict[str, float]:
    """Run ``cmd``; return its own peak RSS (VmHWM), the peak summed RSS of its tree, and wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hwm = tree_peak = 0
    while proc.poll() is None:
        hwm = max(hwm, _proc_status(proc.pid).get("VmHWM", 0))
        pids, total = [proc.pid], 0
        while pids:
            pid = pids.pop()
            total += _proc_status(pid).get("VmRSS", 0)
            pids += _children(pid)
        tree_peak = max(tree_peak, total)
        time.sleep(interval)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return {"hwm": hwm, "tree": tree_peak, "seconds": time.perf_counter() - start, "stdout": out}


class _StubPredictor:
    """Constant-cost stand-in for the network: three fixed detections per frame."""

    class_names = ["person", "car", "dog"]

    def predict(self, images):
        out = []
        for im in images:
            h, w = im.shape[:2]
            out.append(SimpleNamespace(
                boxes=np.array([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.9 * h],
                                [0.0, 0.7 * h, 0.2 * w, h]], np.float32),
                scores=np.array([0.9, 0.8, 0.7], np.float32), labels=np.array([1, 2, 3])))
        return out


def _stub_child(video: str, output: str, json_path: str) -> None:
    summary = detect_video(_StubPredictor(), VideoReader(video), output, json_path=json_path, progress=False)
    print("\n".join(summary.lines(0.6)))


def run_memory(args: argparse.Namespace) -> None:
    w, h = (int(v) for v in args.frame_size.lower().split("x"))
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for n in args.frames:
        video = make_video(os.path.join(args.workdir, f"bench_{n}_{w}x{h}.mp4"), n, w, h)
        out = os.path.join(args.workdir, "out.mp4")
        js = os.path.join(args.workdir, "out.json")
        if args.stub:
            cmd = [sys.executable, os.path.abspath(__file__), "_stub", video, out, js]
        else:
            cmd = [sys.executable, os.path.join(ROOT, "object_detection.py"), args.model, video, "-o", out,
                   "--json", js, "--no-progress", "--device", args.device, "--batch_size", str(args.batch_size)]
        r = measure(cmd)
        rows.append((n, r))
        print(f"{n:>6} frames: peak RSS {r['hwm'] / 2**20:7.1f} MiB (process), {r['tree'] / 2**20:7.1f} MiB "
              f"(with ffmpeg), {r['seconds']:6.1f} s, {n / r['seconds']:6.1f} frames/s", flush=True)
    if len(rows) >= 2:
        (n0, a), (n1, b) = rows[0], rows[-1]
        print(f"difference {n1} vs {n0} frames: process {(b['hwm'] - a['hwm']) / 2**20:+.1f} MiB, "
              f"tree {(b['tree'] - a['tree']) / 2**20:+.1f} MiB (goal: within 50 MB)")


# --------------------------------------------------------------------------------------------
# throughput

def run_throughput(args: argparse.Namespace) -> None:
    w, h = (int(v) for v in args.frame_size.lower().split("x"))
    os.makedirs(args.workdir, exist_ok=True)
    video = make_video(os.path.join(args.workdir, f"bench_{args.frames[0]}_{w}x{h}.mp4"), args.frames[0], w, h)
    device = resolve_device(args.device)
    predictor = open_predictor(args.model, device=device, conf_thresh=args.threshold, amp=args.amp)
    frames = list(VideoReader(video))
    bs = args.batch_size

    def model_only() -> float:
        predictor.predict(frames[:bs])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, len(frames), bs):
            predictor.predict(frames[i:i + bs])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(frames) / (time.perf_counter() - t)

    def pipeline() -> float:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            t = time.perf_counter()
            s = detect_video(predictor, VideoReader(video), os.path.join(tmp, "out.mp4"), threshold=args.threshold,
                             batch_size=bs, json_path=os.path.join(tmp, "out.json"), progress=False)
            return s.frames / (time.perf_counter() - t)

    a = model_only()
    p = pipeline()
    b = model_only()
    ref = (a + b) / 2
    print(f"{len(frames)} frames {w}x{h}, batch {bs}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"model only: {a:.2f} / {b:.2f} frames/s; whole pipeline: {p:.2f} frames/s; "
          f"ratio {p / ref:.3f} (goal >= 0.9)")


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_stub"]:
        _stub_child(*argv[1:4])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("memory", "throughput"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint for the real CLI / predictor")
    src.add_argument("--stub", action="store_true",
                     help="memory mode with a constant stub predictor instead of the network")
    p.add_argument("--frames", type=int, nargs="+", default=None,
                   help="video lengths (memory default: 1000 10000; throughput default: 200)")
    p.add_argument("--frame_size", default="320x240")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ssd_bench_video"))
    args = p.parse_args(argv)
    if args.mode == "memory":
        args.frames = args.frames or [1000, 10000]
        run_memory(args)
    else:
        if args.stub:
            p.error("throughput needs --model")
        args.frames = args.frames or [200]
        run_throughput(args)


if __name__ == "__main__":
    main()
