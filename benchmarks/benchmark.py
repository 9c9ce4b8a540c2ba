"""One-command speed benchmark: the machine's conv ceiling, our SSD300 vs torchvision, Detect share, training
step, video pipeline and ONNX Runtime — all in one process on the same inputs.

    python -m benchmarks.benchmark [--quick] [--json benchmarks/results/cpu.json] [--device auto]

Every figure is the median of ``--reps`` timed runs after a warm-up. No timing asserts anywhere else.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_export import run_benchmark as run_onnx  # noqa: E402
from benchmarks.bench_train import check_baseline_matches, random_targets, time_config  # noqa: E402
from benchmarks.machine import machine_info, machine_summary, write_report  # noqa: E402
from benchmarks.timing import make_frames, timeit  # noqa: E402,F401  (re-exported for older callers)
from data.synthetic import generate_video  # noqa: E402
from ssd import build_ssd  # noqa: E402
from utils.device import amp_dtype, resolve_device  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.inference import Predictor, open_predictor  # noqa: E402
from utils.media.detect import detect_video  # noqa: E402
from utils.media.video_reader import VideoReader  # noqa: E402

SSD300_GFLOP = 62.75  # per 300x300 image (multiply-add = 2 FLOP)


def conv_ceiling(device: torch.device, dtype: torch.dtype, reps: int, batch: int) -> Dict[str, float]:
    """Best GFLOP/s over VGG-like 3x3 convolutions (the layers that dominate SSD's cost)."""
    shapes = [(64, 64, 150), (128, 128, 75), (256, 256, 75), (512, 512, 38), (512, 512, 19)]
    best = 0.0
    per = {}
    for cin, cout, hw in shapes:
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(device).eval().to(memory_format=torch.channels_last)
        x = torch.randn(batch, cin, hw, hw, device=device).contiguous(memory_format=torch.channels_last)
        flop = 2.0 * batch * cout * cin * 9 * hw * hw
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            t = timeit(lambda: conv(x), device, reps)
        per[f"{cin}x{cout}@{hw}"] = flop / t / 1e9
        best = max(best, flop / t / 1e9)
    return {"best_gflops": best, "per_shape": per}


def bench_ours(device: torch.device, frames: List[np.ndarray], batch: int, amp: bool, reps: int,
               weights: Optional[str], compile: bool = False) -> Dict[str, float]:
    if weights:
        pred = open_predictor(weights, device=device, amp=amp, compile=compile)
    else:
        torch.manual_seed(0)
        model = build_ssd("test", 300, 21)
        pred = Predictor(model, [f"c{i}" for i in range(20)], 300, device, amp, compile=compile)
    net = pred.model
    imgs = frames[:batch]
    x = pred.preprocess(imgs).to(device)
    if pred.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # the network alone (compiled with --compile), then Detect alone on its outputs: the public halves of run()
    t_fwd = timeit(lambda: pred.forward_raw(x), device, reps)
    inputs = net.detect_inputs(*pred.forward_raw(x))
    t_det = timeit(lambda: net.detect(*inputs), device, reps)
    t_e2e = timeit(lambda: pred.predict(imgs), device, reps)
    return {"forward_img_s": batch / t_fwd, "e2e_img_s": batch / t_e2e, "detect_ms": t_det * 1e3,
            "detect_share_of_forward": t_det / t_fwd, "forward_gflops": SSD300_GFLOP * batch / t_fwd}


def bench_torchvision(device: torch.device, frames: List[np.ndarray], batch: int, reps: int) -> Dict[str, float]:
    from torchvision.models.detection import ssd300_vgg16
    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).to(device).eval()
    imgs = frames[:batch]

    def run():
        with torch.inference_mode():
            tensors = [torch.from_numpy(f).to(device).permute(2, 0, 1).float().div_(255) for f in imgs]
            out = model(tensors)
            return [{k: v.cpu() for k, v in o.items()} for o in out]

    t = timeit(run, device, reps)
    return {"e2e_img_s": batch / t}


def bench_video(device: torch.device, weights: Optional[str], reps: int, frames: int = 96,
                width: int = 480, height: int = 360) -> Dict[str, Any]:
    """object_detection.py's streaming path (decode → batch → predict → draw → encode) vs predict() alone."""
    if weights:
        pred = open_predictor(weights, device=device, conf_thresh=0.5)
    else:
        torch.manual_seed(0)
        pred = Predictor(build_ssd("test", 300, 21), [f"c{i}" for i in range(20)], 300, device)
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, "in.mp4")
        generate_video(video, frames, 24, width, height, seed=0)
        decoded = list(VideoReader(video))

        def model_only():
            for i in range(0, len(decoded), 8):
                pred.predict(decoded[i:i + 8])

        def pipeline():
            detect_video(pred, VideoReader(video), os.path.join(tmp, "out.mp4"), threshold=0.5, batch_size=8,
                         json_path=os.path.join(tmp, "out.json"), progress=False)

        t_model = timeit(model_only, device, max(1, reps // 2))
        t_pipe = timeit(pipeline, device, max(1, reps // 2))
    return {"frames": frames, "size": f"{width}x{height}", "model_only_fps": frames / t_model,
            "pipeline_fps": frames / t_pipe, "ratio": t_model / t_pipe}


def optional_section(name: str, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    try:
        return fn()
    except ImportError as exc:
        return {"skipped": f"{name}: {exc}"}


def bench_train_step(device: torch.device, reps: int) -> Dict[str, Any]:
    """Training step (batch 8) of benchmarks.bench_train's configurations; speed-ups vs its baseline on CPU."""
    targs = argparse.Namespace(size=300, num_classes=21, width=1.0, batch_norm=False, batch_size=8,
                               warmup=1, iters=max(2, reps // 2))
    check_baseline_matches(build_ssd("train", 300, 21), random_targets(8, 21))
    configs = ["baseline", "fp32-cl", "fp32-cl-frozen", "amp-cl"] if device.type == "cpu" else ["fp32-cl", "amp-cl"]
    out = {c: time_config(c, targs, device) for c in configs}
    if "baseline" in out:
        for c in configs:
            out[c]["speedup_vs_baseline"] = out[c]["images_per_s"] / out["baseline"]["images_per_s"]
    return out


Row = Tuple[str, Dict[str, float]]


def bench_inference(device: torch.device, frames: List[np.ndarray], batches: List[int], sections: Set[str],
                    reps: int, weights: Optional[str], compile: bool, result: Dict[str, Any]) -> List[Row]:
    """torchvision and our configurations (fp32, fast, fast + compile) per batch size, into ``result``;
    returns ``(key, numbers)`` of ours, in order, for the table."""
    rows = []
    for b in batches:
        tv = bench_torchvision(device, frames, b, reps) if "torchvision" in sections else None
        if tv:
            result[f"torchvision_fp32_b{b}"] = tv
        for amp, comp in ((False, False), (True, False), (True, True)):
            if "ours" not in sections or (comp and not compile):
                continue
            r = bench_ours(device, frames, b, amp, reps, weights, comp)
            key = f"ours_{'fast' if amp else 'fp32'}{'+compile' if comp else ''}_b{b}"
            if tv:
                r["e2e_vs_torchvision_fp32"] = r["e2e_img_s"] / tv["e2e_img_s"]
            ceiling = result.get("conv_ceiling_fast" if amp else "conv_ceiling_fp32", {}).get("best_gflops")
            if ceiling:
                r["forward_fraction_of_conv_ceiling"] = r["forward_gflops"] / ceiling
                r["e2e_fraction_of_conv_ceiling"] = r["e2e_img_s"] * SSD300_GFLOP / ceiling
            result[key] = r
            rows.append((key, r))
    return rows


def print_inference_table(result: Dict[str, Any], rows: List[Row], batches: List[int]) -> None:
    print(f"\n{'config':<22}{'fwd img/s':>10}{'e2e img/s':>10}{'GFLOP/s':>9}{'vs tv':>7}{'ceil':>6}"
          f"{'Detect ms':>10}{'Det/fwd':>8}")
    for b in batches:
        if f"torchvision_fp32_b{b}" in result:
            print(f"{'torchvision b' + str(b):<22}{'':>10}{result[f'torchvision_fp32_b{b}']['e2e_img_s']:>10.2f}")
    for key, r in rows:
        print(f"{key:<22}{r['forward_img_s']:>10.2f}{r['e2e_img_s']:>10.2f}{r['forward_gflops']:>9.0f}"
              f"{r.get('e2e_vs_torchvision_fp32', float('nan')):>7.2f}"
              f"{r.get('e2e_fraction_of_conv_ceiling', float('nan')):>6.2f}"
              f"{r['detect_ms']:>10.1f}{100 * r['detect_share_of_forward']:>7.1f}%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (3) and no training/video/ONNX")
    parser.add_argument("--weights", default=None, help="checkpoint for our model (default: random SSD300)")
    parser.add_argument("--sections", default="conv,ours,torchvision,train,video,onnx")
    parser.add_argument("--json", default=None, help="write all numbers here")
    parser.add_argument("--compile", action="store_true",
                        help="also measure the fast mode with torch.compile (--compile on the CLIs)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    reps = 3 if args.quick else args.reps
    batches = [int(b) for b in args.batches.split(",")]
    sections = set(args.sections.split(","))
    if args.quick:
        sections -= {"train", "video", "onnx"}
    frames = make_frames(max(batches))
    fast_dtype = amp_dtype(device)
    # the machine by name (CPU model, cores, threads, AMX / AVX-512 bf16 / VNNI / AVX2): figures from different CPUs
    # are never comparable, so every output says which one it came from (issue 19)
    machine = machine_info()
    machine.update({"processor": platform.processor(), "threads": torch.get_num_threads(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "amp_dtype": str(fast_dtype)})
    result: Dict[str, Any] = {"machine": machine, "machine_summary": machine_summary(machine), "reps": reps}
    print(f"machine: {result['machine_summary']}")
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | median of {reps}")
    if "conv" in sections:
        result["conv_ceiling_fp32"] = conv_ceiling(device, torch.float32, reps, max(batches))
        result["conv_ceiling_fast"] = conv_ceiling(device, fast_dtype, reps, max(batches))
        print(f"conv ceiling: fp32 {result['conv_ceiling_fp32']['best_gflops']:.0f} GFLOP/s, "
              f"{fast_dtype} {result['conv_ceiling_fast']['best_gflops']:.0f} GFLOP/s")
    rows = bench_inference(device, frames, batches, sections, reps, args.weights, args.compile, result)
    print_inference_table(result, rows, batches)
    if "train" in sections:
        result["train"] = optional_section("train", lambda: bench_train_step(device, reps))
        print("train step (batch 8, img/s):", ", ".join(
            f"{c} {r['images_per_s']:.2f}" + (f" ({r['speedup_vs_baseline']:.2f}x)" if "speedup_vs_baseline" in r
                                              else "") for c, r in result["train"].items() if isinstance(r, dict)))
    if "video" in sections:
        result["video"] = bench_video(device, args.weights, reps)
        v = result["video"]
        print(f"video ({v['frames']} frames {v['size']}, batch 8): model only {v['model_only_fps']:.2f} frames/s, "
              f"object_detection pipeline {v['pipeline_fps']:.2f} frames/s, ratio {v['ratio']:.2f}")
    if "onnx" in sections:
        result["onnx"] = optional_section("onnx", lambda: run_onnx(batches=batches, reps=reps))
        print("onnx:", json.dumps(result["onnx"], indent=None, default=str))
    if args.json:
        print()
        write_report(args.json, result)
    return 0

if __name__ == "__main__":
    run_cli(main)
