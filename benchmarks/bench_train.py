"""Training-step throughput of train.py's step against ssd.pytorch's, in the same run.

    python -m benchmarks.bench_train                      # faithful SSD300, batch 8, CPU
    python -m benchmarks.bench_train --iters 3 --json out.json --configs baseline fp32 fp32-cl amp-cl

One step = forward, MultiBox loss (matching + hard negative mining), backward, SGD step, on a fixed random batch
(image content does not change the cost; targets are 1-6 random VOC-like boxes per image). Data loading is not
timed. Configurations:

* ``baseline`` — ssd.pytorch's step: NCHW fp32, ground truth matched to the priors **image by image in a Python
  loop** (``layers/box_utils.match`` as it was, with its per-ground-truth loop forcing best priors), its loss
  (``log_sum_exp`` mining on the flattened batch). Written here, not imported, so it stays ssd.pytorch's.
* ``fp32`` — this project's step (batched matching on the device, ``MultiBoxLoss``), NCHW fp32, all layers trained.
* ``fp32-cl`` — the same with ``--channels_last`` (train.py's default on CPUs).
* ``fp32-cl-frozen`` — and ``--freeze conv2``: conv1_1..conv2_2 fixed as in the original Caffe SSD; train.py's
  default when it fine-tunes from ``vgg16_reducedfc.pth`` (``--freeze none`` trains them, as ssd.pytorch did).
* ``amp`` / ``amp-cl`` / ``amp-cl-frozen`` — the same three with ``--amp`` (bf16 autocast on CPUs).

The baseline's targets are checked against the batched matcher's before timing (same assignment).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.machine import write_report  # noqa: E402  (project imports after the path set-up)
from layers.matching import match_targets  # noqa: E402
from layers.multibox_loss import MultiBoxLoss  # noqa: E402
from ssd import build_ssd  # noqa: E402
from utils.device import amp_dtype, autocast, resolve_device  # noqa: E402
from utils.training.loss import multibox_loss_sums  # noqa: E402
from utils.training.optim import freeze_vgg  # noqa: E402

CONFIGS = ("baseline", "fp32", "fp32-cl", "fp32-cl-frozen", "amp", "amp-cl", "amp-cl-frozen")


# ----------------------------------------------------------------------------------------------------------
# ssd.pytorch's matching and loss (the baseline)
# ----------------------------------------------------------------------------------------------------------

def _point_form(priors: torch.Tensor) -> torch.Tensor:
    return torch.cat((priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), 1)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    max_xy = torch.min(a[:, None, 2:], b[None, :, 2:])
    min_xy = torch.max(a[:, None, :2], b[None, :, :2])
    inter = torch.clamp(max_xy - min_xy, min=0).prod(2)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / (area_a + area_b - inter)


def _encode(matched: torch.Tensor, priors: torch.Tensor, variances: Sequence[float]) -> torch.Tensor:
    g_cxcy = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    g_wh = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def ssd_pytorch_match(threshold: float, truths: torch.Tensor, priors: torch.Tensor, variances: Sequence[float],
                      labels: torch.Tensor, loc_t: torch.Tensor, conf_t: torch.Tensor, idx: int) -> None:
    """ssd.pytorch's ``match`` for one image (fills row ``idx`` of loc_t / conf_t)."""
    overlaps = _jaccard(truths, _point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1, keepdim=True)
    best_truth_overlap, best_truth_idx = overlaps.max(0, keepdim=True)
    best_truth_idx.squeeze_(0)
    best_truth_overlap.squeeze_(0)
    best_prior_idx.squeeze_(1)
    best_prior_overlap.squeeze_(1)
    best_truth_overlap.index_fill_(0, best_prior_idx, 2)
    for j in range(best_prior_idx.size(0)):  # the per-ground-truth Python loop
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx] + 1
    conf[best_truth_overlap < threshold] = 0
    loc_t[idx] = _encode(matches, priors, variances)
    conf_t[idx] = conf


def _log_sum_exp(x: torch.Tensor) -> torch.Tensor:
    x_max = x.detach().max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1, keepdim=True)) + x_max


def ssd_pytorch_loss(loc_data: torch.Tensor, conf_data: torch.Tensor, priors: torch.Tensor,
                     targets: List[torch.Tensor], num_classes: int, variances=(0.1, 0.2), threshold: float = 0.5,
                     negpos_ratio: int = 3) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ssd.pytorch's ``MultiBoxLoss.forward`` (with the reshape fix every fork applies). Returns ``(l, c, conf_t)``."""
    num, num_priors = loc_data.size(0), priors.size(0)
    loc_t = torch.zeros(num, num_priors, 4)
    conf_t = torch.zeros(num, num_priors, dtype=torch.long)
    for idx in range(num):  # image by image
        ssd_pytorch_match(threshold, targets[idx][:, :-1], priors, variances, targets[idx][:, -1].long(),
                          loc_t, conf_t, idx)
    pos = conf_t > 0
    pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
    loss_l = F.smooth_l1_loss(loc_data[pos_idx].view(-1, 4), loc_t[pos_idx].view(-1, 4), reduction="sum")
    batch_conf = conf_data.view(-1, num_classes)
    loss_c = _log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))
    loss_c = loss_c.view(num, -1).detach().clone()
    loss_c[pos] = 0
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp(negpos_ratio * num_pos, max=pos.size(1) - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)
    pos_idx = pos.unsqueeze(2).expand_as(conf_data)
    neg_idx = neg.unsqueeze(2).expand_as(conf_data)
    conf_p = conf_data[(pos_idx | neg_idx)].view(-1, num_classes)
    targets_weighted = conf_t[(pos | neg)]
    loss_c = F.cross_entropy(conf_p, targets_weighted, reduction="sum")
    n = num_pos.sum().float()
    return loss_l / n, loss_c / n, conf_t


# ----------------------------------------------------------------------------------------------------------
# the steps
# ----------------------------------------------------------------------------------------------------------

def random_targets(batch: int, num_classes: int, seed: int = 0) -> List[torch.Tensor]:
    """1-6 boxes per image, relative xyxy, 5%-80% of the side, labels 0..C-2."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        n = int(torch.randint(1, 7, (1,), generator=g))
        wh = 0.05 + 0.75 * torch.rand(n, 2, generator=g)
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        labels = torch.randint(0, num_classes - 1, (n, 1), generator=g).float()
        out.append(torch.cat([xy, xy + wh, labels], 1))
    return out


def make_step(config: str, model, optimizer, criterion, images, targets, device) -> Callable[[], float]:
    channels_last = "-cl" in config
    amp = config.startswith("amp")
    if config.endswith("-frozen"):
        freeze_vgg(model, "conv2")
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    else:
        model.to(memory_format=torch.contiguous_format)

    if config == "baseline":
        def step() -> float:
            loc, conf, priors = model(images)
            loss_l, loss_c, _ = ssd_pytorch_loss(loc, conf, priors, targets, model.num_classes)
            loss = loss_l + loss_c
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()
        return step

    def step() -> float:  # train.py's step (single process)
        with autocast(device, amp):
            loc, conf, priors = model(images)
        loss_l, loss_c, num_pos = multibox_loss_sums(criterion, loc, conf, priors, targets)
        loss = (loss_l + loss_c) / num_pos.clamp(min=1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def check_baseline_matches(model, targets: List[torch.Tensor]) -> None:
    """The Python-loop matcher and the batched one assign the same labels and offsets."""
    priors = model.priors.float()
    loc_t = torch.zeros(len(targets), priors.shape[0], 4)
    conf_t = torch.zeros(len(targets), priors.shape[0], dtype=torch.long)
    for i, t in enumerate(targets):
        ssd_pytorch_match(0.5, t[:, :4], priors, (0.1, 0.2), t[:, 4].long(), loc_t, conf_t, i)
    loc_b, conf_b = match_targets(targets, priors, (0.1, 0.2), 0.5)
    if not torch.equal(conf_t, conf_b) or not torch.allclose(loc_t, loc_b, atol=1e-5):
        raise SystemExit("baseline and batched matching disagree — the comparison would be meaningless")


def time_config(config: str, args, device) -> Dict[str, float]:
    torch.manual_seed(0)
    model = build_ssd("train", args.size, args.num_classes, width=args.width, batch_norm=args.batch_norm,
                      stem=args.stem).to(device)
    model.train()
    criterion = MultiBoxLoss(args.num_classes, 0.5, True, 0, True, 3, 0.5, False, device.type == "cuda")
    images = torch.randn(args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)) * 50
    images = images.to(device)
    targets = [t.to(device) for t in random_targets(args.batch_size, args.num_classes)]
    if config == "baseline" and device.type != "cpu":
        raise SystemExit("the baseline is written for CPU tensors (ssd.pytorch's default tensor type); "
                         "use --device cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    step = make_step(config, model, optimizer, criterion, images, targets, device)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"seconds_per_step": med, "images_per_s": args.batch_size / med, "loss": loss,
            "steps": [round(t, 4) for t in times]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=CONFIGS,
                   default=["baseline", "fp32-cl", "fp32-cl-frozen", "amp-cl", "amp-cl-frozen"])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--size", type=int, choices=(200, 300, 512), default=300)
    p.add_argument("--num_classes", type=int, default=21)
    p.add_argument("--width", type=float, default=1.0, help="1.0 = the faithful VGG-16 SSD")
    p.add_argument("--batch_norm", action="store_true")
    p.add_argument("--stem", choices=("vgg", "s2"), default="vgg", help="s2: the cpu-demo preset's stride-2 stem")
    p.add_argument("--iters", type=int, default=3, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    check_baseline_matches(build_ssd("train", args.size, args.num_classes), random_targets(args.batch_size,
                                                                                           args.num_classes))
    print(f"SSD{args.size} width {args.width:g}{' +BN' if args.batch_norm else ''} stem {args.stem}, "
          f"batch {args.batch_size}, "
          f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"amp dtype {str(amp_dtype(device)).replace('torch.', '')}, torch {torch.__version__}; "
          f"median of {args.iters} steps after {args.warmup} warm-up", flush=True)
    results: Dict[str, Dict[str, float]] = {}
    for config in args.configs:
        results[config] = time_config(config, args, device)
        r = results[config]
        print(f"  {config:15s} {r['seconds_per_step']:8.3f} s/step  {r['images_per_s']:7.2f} img/s  "
              f"(steps {r['steps']})", flush=True)
    if "baseline" in results:
        base = results["baseline"]["images_per_s"]
        for config, r in results.items():
            r["speedup_vs_baseline"] = r["images_per_s"] / base
        print("speed-up vs ssd.pytorch's step: " + ", ".join(
            f"{c} {r['speedup_vs_baseline']:.2f}x" for c, r in results.items() if c != "baseline"))
    if args.json:
        write_report(args.json, {"args": vars(args), "device": str(device), "torch": torch.__version__,
                                 "threads": torch.get_num_threads(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
