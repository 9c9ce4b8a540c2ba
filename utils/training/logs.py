"""What a run reports: the CSV log (+ TensorBoard events when installed), the loss window behind each log row,
the progress bar or plain log lines, and the console messages of rank 0."""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from tqdm import tqdm

from utils.io import atomic_write, reporting_no_space

# columns of ssd{size}_{dataset}_log.csv
CSV_FIELDS = ("iteration", "loss", "loss_l", "loss_c", "lr", "images_per_s", "skipped", "elapsed_s")


def info(msg: str, main: bool = True) -> None:
    """A message on stdout (rank 0 only)."""
    if main:
        print(msg, flush=True)


def note(msg: str, main: bool = True) -> None:
    """``note: ...`` on stderr (rank 0 only): a flag ignored, a file cleaned up."""
    if main:
        print(f"note: {msg}", file=sys.stderr, flush=True)


class TrainLog:
    """CSV log (always) plus TensorBoard events (when ``tensorboard`` is installed).

    ``resume_at``: rows with an iteration beyond it (written by a run that went further before being killed)
    are dropped, so the file reads as one continuous run. A full disk while appending a row is the one-line
    ``no space left on device while writing <the CSV>`` error (exit status 1); closing after it stays quiet.
    """

    def __init__(self, csv_path: str, fields: Sequence[str], tensorboard_dir: Optional[str] = None,
                 resume_at: Optional[int] = None) -> None:
        self.path = csv_path
        self.fields = list(fields)
        rows = _rows_up_to(csv_path, resume_at) if resume_at is not None else []
        os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
        with atomic_write(csv_path, suffix=".tmp") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self.fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        self._fh = open(csv_path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, self.fields, extrasaction="ignore")
        self._failed = False  # a write failed (full disk): the error was raised once; close() does not repeat it
        self.tb_dir = tensorboard_dir
        self.tb = _summary_writer(tensorboard_dir, resume_at) if tensorboard_dir is not None else None

    def log(self, row: Mapping[str, Any], tb_prefix: str = "train") -> None:
        try:
            with reporting_no_space(self.path):
                self._writer.writerow({k: _fmt(v) for k, v in row.items()})
                self._fh.flush()
        except Exception:
            self._failed = True
            raise
        if self.tb is not None:
            step = int(row["iteration"])
            with reporting_no_space(self.tb_dir):
                for k, v in row.items():
                    if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        self.tb.add_scalar(f"{tb_prefix}/{k}", v, step)

    def close(self) -> None:
        try:
            with reporting_no_space(self.path):
                self._fh.close()
        except Exception:
            if not self._failed:  # (after a failed write, closing retries the same flush: already reported)
                raise
        finally:
            if self.tb is not None:
                with reporting_no_space(self.tb_dir):
                    self.tb.close()


def _rows_up_to(csv_path: str, resume_at: int) -> List[Dict[str, str]]:
    """Complete rows of an existing log up to the resume point (a kill can leave a half-written last line)."""
    if not os.path.isfile(csv_path):
        return []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if None not in r and None not in r.values()
                and 0 <= _int_or(r.get("iteration"), -1) <= resume_at]


def _summary_writer(folder: str, purge_step: Optional[int]):
    """A TensorBoard SummaryWriter, or None when tensorboard is not installed (it is optional: import deferred)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(folder, purge_step=purge_step)


class LossWindow:
    """Mean finite losses and time per iteration since the last log line (one row per ``--log_every``)."""

    def __init__(self) -> None:
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.t0 = now
        self.loss_l = self.loss_c = 0.0
        self.finite = 0
        self.iterations = 0

    def add(self, loss_l: float, loss_c: float, finite: bool) -> None:
        self.iterations += 1
        if finite:
            self.loss_l += loss_l
            self.loss_c += loss_c
            self.finite += 1

    def row(self, iteration: int, lr: float, images_per_iteration: int, skipped: int,
            elapsed: float) -> Dict[str, Any]:
        """The log row (NaN losses when every step of the window was skipped); starts a new window."""
        now = time.perf_counter()
        per_iter = (now - self.t0) / max(1, self.iterations)
        n = self.finite
        nan = float("nan")
        row = {"iteration": iteration, "loss": (self.loss_l + self.loss_c) / n if n else nan,
               "loss_l": self.loss_l / n if n else nan, "loss_c": self.loss_c / n if n else nan, "lr": lr,
               "images_per_s": images_per_iteration / per_iter if per_iter > 0 else nan, "skipped": skipped,
               "elapsed_s": elapsed, "seconds_per_iteration": per_iter}
        self._reset(now)
        return row


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def log_line(row: Mapping[str, Any], max_iter: Optional[int], skipped: int) -> str:
    """The line printed per --log_every when not on a terminal (ssd.pytorch printed these); ``max_iter`` None:
    not chosen yet (``--max_iter auto``)."""
    left = math.nan if max_iter is None else max_iter - row["iteration"]
    eta = format_eta(left * row["seconds_per_iteration"])
    end = "auto" if max_iter is None else max_iter
    return (f"iter {row['iteration']}/{end} || loss {row['loss']:.4f} (loc {row['loss_l']:.4f}, "
            f"conf {row['loss_c']:.4f}) || lr {row['lr']:.2e} || {row['images_per_s']:.1f} img/s "
            f"|| eta {eta}{f' || skipped {skipped}' if skipped else ''}")


def progress_bar(main: bool, start: int, total: Optional[int]) -> Optional[tqdm]:
    """A tqdm bar on a terminal (rank 0); None elsewhere (then one line per --log_every is printed).
    ``total`` None: not known yet (``--max_iter auto`` sets ``bar.total`` once it has chosen)."""
    if not main or not sys.stderr.isatty():
        return None
    return tqdm(total=total, initial=start, dynamic_ncols=True, unit="it", smoothing=0.05)


def _fmt(v: Any) -> Any:
    return f"{v:.9g}" if isinstance(v, float) else v


def _int_or(v: Optional[str], default: int) -> int:
    try:
        return int(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
