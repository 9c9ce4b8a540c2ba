"""Detect on CUDA at batch 8 and 64 (random-weight-like SSD300 outputs, Detect's worst case): time, fixed-point
rounds, CUDA result vs CPU result, peak memory.

    python -m benchmarks.detect_cuda_check  (needs a GPU; part of benchmarks/gpu.sh)
"""
import sys
import time

import torch

sys.path.insert(0, ".")
from data.config import get_config  # noqa: E402
from layers.detection import Detect  # noqa: E402
from layers.prior_box import PriorBox  # noqa: E402


def main() -> None:
    priors = PriorBox(get_config("VOC", 300)).forward()
    g = torch.Generator().manual_seed(0)
    for B in (8, 64):
        loc = torch.randn(B, priors.shape[0], 4, generator=g) * 1.27
        conf = torch.softmax(torch.randn(B, priors.shape[0], 21, generator=g) * 0.5, -1)
        d = Detect(21)
        ref = d(loc, conf, priors)
        lc, cc, pc = loc.cuda(), conf.cuda(), priors.cuda()
        n_eq = [0]; orig = torch.equal
        def counting_equal(a, b):
            n_eq[0] += 1; return orig(a, b)
        torch.equal = counting_equal
        out = d(lc, cc, pc); torch.cuda.synchronize()
        torch.equal = orig
        o = out.cpu()
        same = torch.equal(o, ref)
        diff = (o != ref).any(-1).sum().item()
        # exact equality is too strict across devices (exp/division round differently, and a box at the IoU
        # threshold can flip): also report how far apart the outputs are and in how many (image, class) groups
        # the kept count agrees
        max_abs = (o - ref).abs().max().item()
        count_agree = ((o[..., 0] > 0).sum(-1) == (ref[..., 0] > 0).sum(-1)).float().mean().item()
        ts = []
        for _ in range(20):
            torch.cuda.synchronize(); t = time.perf_counter(); d(lc, cc, pc); torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        ts.sort()
        print(f"B={B}: cuda==cpu {same} (rows differing {diff}, max |diff| {max_abs:.2e}, groups with the same kept "
              f"count {100 * count_agree:.1f}%), fixed-point iterations {n_eq[0]}, "
              f"Detect median {ts[10]*1e3:.2f} ms, {B / ts[10]:.0f} img/s for Detect alone, "
              f"peak mem {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
