"""Helpers for the training tests: a tiny custom dataset, train.py runs in fast child processes, and
``share_from_main`` across two gloo processes.

Training runs go through a multiprocessing *forkserver* that has imported train.py once: each run is then a
fresh process (real exit status, signals, SIGKILL) that starts in well under a second instead of re-importing
torch. The forkserver never runs a torch op before forking, so forking it is safe.
"""
from __future__ import annotations

import csv
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.distributed as torch_dist

import train
from utils.errors import run_cli
from utils.training.budget import Throughput, share_from_main
from utils.training.distributed import DistInfo

TINY = ["--dataset", "custom", "--width", "0.125", "--batch_size", "2", "--num_workers", "0", "--threads", "1",
        "--warmup", "0", "--log_every", "1", "--basenet", "none"]


def make_tiny_dataset(root: str, num: int = 8, size: int = 64, seed: int = 0,
                      classes: Sequence[str] = ("box", "disc")) -> str:
    """A custom (VOC-layout) dataset of ``num`` small images with 1-2 filled shapes each; splits train and val."""
    rng = np.random.RandomState(seed)
    for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    with open(os.path.join(root, "labels.txt"), "w") as fh:
        fh.write("\n".join(classes) + "\n")
    ids = []
    for i in range(num):
        img = np.full((size, size, 3), 40, np.uint8)
        objects = []
        for _ in range(rng.randint(1, 3)):
            c = rng.randint(len(classes))
            w, h = rng.randint(size // 4, size // 2, size=2)
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            if c == 0:
                cv2.rectangle(img, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), (230, 60, 60), -1)
            else:
                cv2.ellipse(img, (int(x + w // 2), int(y + h // 2)), (int(w // 2), int(h // 2)), 0, 0, 360,
                            (60, 220, 60), -1)
            objects.append((classes[c], x + 1, y + 1, x + w, y + h))  # VOC: 1-based pixel corners
        image_id = f"img{i:03d}"
        ids.append(image_id)
        cv2.imwrite(os.path.join(root, "JPEGImages", image_id + ".png"), img[:, :, ::-1])
        xml = [f"<annotation><filename>{image_id}.png</filename><size><width>{size}</width>"
               f"<height>{size}</height><depth>3</depth></size>"]
        for name, x1, y1, x2, y2 in objects:
            xml.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
                       f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
        xml.append("</annotation>")
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as fh:
            fh.write("".join(xml))
    for split in ("train", "val"):
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as fh:
            fh.write("\n".join(ids) + "\n")
    return root


def _child(argv: List[str], env: Dict[str, str], out_path: str, err_path: str) -> None:
    """Child process body: redirect stdout/stderr to files, then run the real CLI entry point."""
    os.environ.update(env)
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    run_cli(train.main, argv)


_CTX: Optional[mp.context.BaseContext] = None


def context() -> mp.context.BaseContext:
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "cv2", "train", "train_helpers", "ssd", "data", "layers",
                                     "utils.training.trainer", "data.transforms"])
    return _CTX


@dataclass
class Run:
    process: mp.process.BaseProcess
    out_path: str
    err_path: str

    @property
    def stdout(self) -> str:
        with open(self.out_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    @property
    def stderr(self) -> str:
        with open(self.err_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def wait(self, timeout: float = 120.0) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise AssertionError(f"train.py did not finish in {timeout} s; stderr:\n{self.stderr}")
        return self.process.exitcode


def start_train(argv: Sequence[str], logdir: str, env: Optional[Dict[str, str]] = None, tag: str = "run") -> Run:
    """Start ``train.py argv`` in a child process (stdout/stderr to files under ``logdir``)."""
    os.makedirs(logdir, exist_ok=True)
    n = len([f for f in os.listdir(logdir) if f.endswith(".out")])
    out_path = os.path.join(logdir, f"{tag}{n}.out")
    err_path = os.path.join(logdir, f"{tag}{n}.err")
    p = context().Process(target=_child, args=(list(argv), dict(env or {}), out_path, err_path))
    p.start()
    return Run(p, out_path, err_path)


def run_train(argv: Sequence[str], logdir: str, env: Optional[Dict[str, str]] = None, timeout: float = 120.0,
              tag: str = "run") -> Run:
    run = start_train(argv, logdir, env, tag)
    run.wait(timeout)
    return run


def tiny(data_root: str, folder, *extra) -> List[str]:
    """train.py flags of a tiny run on ``data_root`` writing to ``folder`` (``TINY`` + the given extras)."""
    return TINY + ["--dataset_root", data_root, "--save_folder", str(folder)] + [str(e) for e in extra]


def train_then_resume(data_root: str, folder, args: Sequence, logdir: str, at: int = 3):
    """Run ``args`` uninterrupted in ``folder/a``, copy its iteration-``at`` checkpoint into ``folder/b`` and
    continue it there with ``--resume latest`` alone (every run setting must come back from the checkpoint).
    Returns ``(straight, resumed, log_a, log_b)``; both runs must have exited 0."""
    a, b = os.path.join(str(folder), "a"), os.path.join(str(folder), "b")
    straight = run_train(tiny(data_root, a, *args), logdir)
    assert straight.process.exitcode == 0, straight.stderr
    os.makedirs(b)
    shutil.copy(os.path.join(a, f"ssd300_custom_{at}.pth"), b)
    resumed = run_train(["--dataset", "custom", "--save_folder", b, "--resume", "latest", "--num_workers", "0",
                         "--threads", "1", "--log_every", "1"], logdir)
    assert resumed.process.exitcode == 0, resumed.stderr
    return (straight, resumed, read_log(os.path.join(a, "ssd300_custom_log.csv")),
            read_log(os.path.join(b, "ssd300_custom_log.csv")))


def read_log(path: str) -> List[Dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def _share_child(rank: int, port: int, measured: Throughput, out_path: str) -> None:
    """One rank of a 2-process gloo group: write what share_from_main gives this rank."""
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        shared = share_from_main(measured, DistInfo(rank, 2, rank), torch.device("cpu"))
    finally:
        torch_dist.destroy_process_group()
    with open(out_path, "w") as fh:
        fh.write(repr(shared))


def share_in_two_processes(measured: Sequence[Throughput], folder: str, port: int) -> List[str]:
    """``share_from_main`` in two gloo processes, rank r passing ``measured[r]``; returns repr() of each result."""
    paths = [os.path.join(folder, f"shared{r}.txt") for r in range(2)]
    procs = [context().Process(target=_share_child, args=(r, port, measured[r], paths[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.exitcode is None:
            p.kill()
    out = []
    for path in paths:
        with open(path) as fh:
            out.append(fh.read())
    return out
