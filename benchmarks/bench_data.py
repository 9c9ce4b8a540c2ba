"""Data-pipeline throughput: synthetic generator, SSD augmentation and inference preprocessing.

    python -m benchmarks.bench_data [--num 1000] [--aug-images 400] [--threads 1] [--json OUT]

Everything runs with ``--threads`` OpenCV / torch threads (default 1, i.e. per-core numbers). Each figure is
reported as images per wall-clock second and per CPU second of this process; on a shared machine the CPU
figure is the more stable one. Augmentation is measured on 500x375 RGB images (the typical VOC size) with
three boxes each.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # allow `python benchmarks/bench_data.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2
import numpy as np
import torch

from data.synthetic import generate_dataset, make_noise_bank, render_image
from data.transforms import SSDAugmentation, preprocess, preprocess_batch
from utils.errors import run_cli


def _rate(n: int, fn: Callable[[], None]) -> Dict[str, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"images": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "per_wall_s": round(n / max(wall, 1e-9), 1), "per_cpu_s": round(n / max(cpu, 1e-9), 1)}


def bench_generator(num: int, seed: int = 0, out_dir: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Render-only (no encoding / files) and end-to-end ``generate_dataset`` throughput."""
    bank = make_noise_bank(seed)

    def render() -> None:
        for i in range(num):
            rng = np.random.default_rng([seed, i])
            render_image(rng, int(rng.integers(300, 481)), int(rng.integers(240, 401)), bank)

    res = {"render_only": _rate(num, render)}
    parent = tempfile.mkdtemp(prefix="bench_syn_", dir=out_dir)
    try:
        res["generate_dataset"] = _rate(num, lambda: generate_dataset(os.path.join(parent, "d"), num, seed))
        res["generate_dataset"]["folder"] = parent  # type: ignore[assignment]
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    return res


def _aug_inputs(n: int) -> List[np.ndarray]:
    rs = np.random.RandomState(0)
    base = rs.randint(0, 256, (375, 500, 3)).astype(np.uint8)
    base = cv2.GaussianBlur(base, (0, 0), 3)  # image-like, not pure noise
    return [np.roll(base, i * 7, axis=1) for i in range(min(n, 16))]


def bench_augmentation(num: int) -> Dict[str, Dict[str, float]]:
    imgs = _aug_inputs(num)
    boxes = np.array([[0.1, 0.1, 0.45, 0.6], [0.4, 0.3, 0.95, 0.95], [0.7, 0.05, 0.78, 0.15]], np.float32)
    labels = np.array([0, 3, 1], np.float32)
    res: Dict[str, Dict[str, float]] = {}
    for mode in ("ssd", "flip"):
        aug = SSDAugmentation(300, mode=mode, rng=np.random.RandomState(0))
        res[f"SSDAugmentation[{mode}]"] = _rate(num, lambda: [aug(imgs[i % len(imgs)], boxes, labels)
                                                             for i in range(num)])
    ref = SSDAugmentation(300, rng=np.random.RandomState(0)).unfused()
    n_ref = max(1, num // 2)
    res["op-by-op chain (ssd.pytorch-style, reference)"] = _rate(
        n_ref, lambda: [ref(imgs[i % len(imgs)], boxes, labels) for i in range(n_ref)])
    res["preprocess (BaseTransform)"] = _rate(num, lambda: [preprocess(imgs[i % len(imgs)], 300)
                                                           for i in range(num)])
    batches = max(1, num // 8)
    res["preprocess_batch (B=8)"] = _rate(batches * 8, lambda: [preprocess_batch(imgs[:8], 300)
                                                                for _ in range(batches)])
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_data", description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=1000, help="images to generate (default 1000)")
    p.add_argument("--aug-images", type=int, default=400, help="images to augment per measurement (default 400)")
    p.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads (default 1 = per core)")
    p.add_argument("--out-dir", help="where the generated dataset is written (default: the system temp folder)")
    p.add_argument("--json", help="also write the results here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    results = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "threads": args.threads, "opencv": cv2.__version__, "numpy": np.__version__,
                    "load_avg": [round(x, 2) for x in os.getloadavg()]},
        "generator": bench_generator(args.num, out_dir=args.out_dir),
        "augmentation_500x375": bench_augmentation(args.aug_images),
    }
    for section in ("generator", "augmentation_500x375"):
        print(f"{section}:")
        for name, r in results[section].items():
            print(f"  {name:50s} {r['per_wall_s']:8.1f} img/s wall   {r['per_cpu_s']:8.1f} img/s per CPU-s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    run_cli(main)
