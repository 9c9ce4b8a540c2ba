"""Peak memory of eval.py against the size of the evaluated split (issue 9, "long inputs").

    python benchmarks/bench_eval_memory.py --sizes 200 2000 --threads 1

Generates one synthetic custom dataset (``data.synthetic``) with ``max(--sizes)`` images, writes a split file
``all_<n>.txt`` with the first ``n`` ids for each size, saves a tiny random SSD300 (``--width``, default 0.125)
with the dataset's class names, and runs the real CLI once per size in a fresh process::

    python eval.py --trained_model tiny.pth --dataset custom --dataset_root DS --set all_<n> \
        --num_workers 0 --device cpu --batch_size 8 --no-progress --save_folder OUT/ev_<n>

The peak RSS is the child's own ``ru_maxrss`` from ``os.wait4`` (the kernel's high-water mark of that one
process, no sampling). An untrained model is the worst case for what eval.py keeps: nearly every prior passes
``--confidence_threshold 0.01``, so each image gives ~``top_k`` detections per class, all of which are held
until scoring and written to the results files; the number of detections is reported with the memory.
Linux only (``ru_maxrss`` in KiB).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.custom import read_labels  # noqa: E402
from data.synthetic import generate_dataset  # noqa: E402
from utils.loading.checkpoint import save_checkpoint  # noqa: E402
from utils.loading.config import ModelConfig  # noqa: E402


def prepare(work: str, num: int, width: float, seed: int) -> Dict[str, Any]:
    """The dataset (reused when already there) and the tiny checkpoint."""
    root = os.path.join(work, f"synthetic_{num}")
    if not os.path.isfile(os.path.join(root, "synthetic.json")):
        t0 = time.perf_counter()
        generate_dataset(root, num, seed=seed)
        print(f"generated {num} images in {time.perf_counter() - t0:.0f} s: {root}", file=sys.stderr)
    ids = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(root, "Annotations")))
    names = read_labels(root)
    torch.manual_seed(seed)
    config = ModelConfig(300, len(names) + 1, width)
    ckpt = os.path.join(work, f"tiny_w{width:g}.pth")
    save_checkpoint({"model": config.build("train").state_dict(), "class_names": names,
                     "config": config.to_dict()}, ckpt)
    return {"root": root, "ids": ids, "checkpoint": ckpt}


def run_eval(root: str, checkpoint: str, set_name: str, save_folder: str, threads: int, batch_size: int,
             conf: float) -> Dict[str, Any]:
    """One eval.py process; its peak RSS (ru_maxrss), wall time and the detections it wrote."""
    cmd = [sys.executable, os.path.join(ROOT, "eval.py"), "--trained_model", checkpoint, "--dataset", "custom",
           "--dataset_root", root, "--set", set_name, "--num_workers", "0", "--device", "cpu",
           "--batch_size", str(batch_size), "--confidence_threshold", str(conf), "--no-progress",
           "--save_folder", save_folder]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile("w+") as out_fh, tempfile.TemporaryFile("w+") as err_fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out_fh, stderr=err_fh)
        # reap it ourselves (not proc.wait) to get that one process's rusage
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        out_fh.seek(0)
        err_fh.seek(0)
        out, err = out_fh.read(), err_fh.read()
    if code != 0:
        raise SystemExit(f"eval.py failed ({code}):\n{err[-2000:]}")
    detections = 0
    for name in os.listdir(save_folder):
        if name.startswith("comp4_det_"):
            with open(os.path.join(save_folder, name)) as fh:
                detections += sum(1 for _ in fh)
    return {"peak_rss_mb": usage.ru_maxrss / 1024.0, "seconds": seconds, "detections": detections,
            "summary": [ln for ln in out.splitlines() if ln.startswith(("mAP", "Mean AP"))][-1:]}


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000], help="split sizes to evaluate")
    p.add_argument("--width", type=float, default=0.125, help="model width multiplier (tiny: fast on a CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the eval.py process")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--conf", type=float, default=0.01, help="eval.py --confidence_threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the dataset and outputs (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)

    work = args.work or tempfile.mkdtemp(prefix="bench_eval_memory.")
    os.makedirs(work, exist_ok=True)
    sizes = sorted(set(args.sizes))
    setup = prepare(work, max(sizes), args.width, args.seed)
    rows = []
    for n in sizes:
        set_name = f"all_{n}"
        with open(os.path.join(setup["root"], "ImageSets", "Main", set_name + ".txt"), "w") as fh:
            fh.write("\n".join(setup["ids"][:n]) + "\n")
        save_folder = os.path.join(work, f"ev_{n}")
        shutil.rmtree(save_folder, ignore_errors=True)
        row = {"images": n, **run_eval(setup["root"], setup["checkpoint"], set_name, save_folder, args.threads,
                                       args.batch_size, args.conf)}
        rows.append(row)
        print(f"{n:>6} images: peak RSS {row['peak_rss_mb']:7.1f} MB, {row['detections']:>9} detections, "
              f"{row['seconds']:6.1f} s", flush=True)
    if len(rows) > 1:
        growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
        print(f"peak RSS growth {rows[0]['images']} -> {rows[-1]['images']} images: {growth:+.1f} MB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"width": args.width, "threads": args.threads, "batch_size": args.batch_size,
                       "conf": args.conf, "rows": rows}, fh, indent=2)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
