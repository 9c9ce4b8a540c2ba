"""Timing helpers shared by the benchmarks: median of timed runs, and VOC-sized test frames."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, List

import cv2
import numpy as np
import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median seconds of ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timeit_alternating(fns: List[Callable[[], Any]], reps: int, warmup: int = 1) -> List[float]:
    """Median seconds per call of each of ``fns`` (CPU), called in turn ``reps`` times after ``warmup`` rounds, so
    that a host whose speed drifts during the measurement affects all of them alike."""
    times: List[List[float]] = [[] for _ in fns]
    for round_ in range(warmup + reps):
        for fn, spent in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            if round_ >= warmup:
                spent.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def make_frames(n: int, seed: int = 0) -> List[np.ndarray]:
    """VOC-sized uint8 RGB frames (500x375) with some structure (smooth colour blobs, not noise)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        base = rng.integers(0, 255, size=(375 // 25 + 1, 500 // 25 + 1, 3), dtype=np.uint8)
        frames.append(cv2.resize(base, (500, 375), interpolation=cv2.INTER_CUBIC))
    return frames
