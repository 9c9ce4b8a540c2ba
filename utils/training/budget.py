"""``--max_iter auto``: a training run that fills its ``--time_budget`` on the machine it runs on.

The run times its first iterations — after the first few, whose start-up effects (oneDNN primitive creation,
memory pools growing, loader workers starting) are not the steady speed — and from that speed chooses how many
iterations end at about the budget. The LR schedule is then set over that many (the cosine's length; step decays
at the same fractions of the run as the dataset config's ``lr_steps``), and the choice goes into the checkpoint's
config, so ``--resume`` continues the same schedule. The ``--time_budget`` guard still stops a run that turns out
slower than measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from utils.training.distributed import DistInfo, all_reduce_sum

SKIP_ITERATIONS = 5       # not timed: start-up effects (at least 1: timing starts when one has ended)
MEASURE_ITERATIONS = 20   # timed: the steady speed
SAFETY = 0.98             # aim ~2 % short of the budget: the final checkpoint and timing noise fit in the rest


@dataclass(frozen=True)
class Throughput:
    """A timing of ``iterations`` consecutive iterations that took ``seconds``; when it ended, ``done``
    iterations had been trained in all and ``elapsed`` seconds had passed since training started."""

    iterations: int
    seconds: float
    done: int
    elapsed: float

    @property
    def per_second(self) -> float:
        """Iterations per second."""
        return self.iterations / self.seconds if self.seconds > 0 else math.inf


class ThroughputMeter:
    """Times iterations ``start_iter + skip + 1`` .. ``start_iter + skip + measure`` of a run.

    Call :meth:`observe` after every iteration; it returns the :class:`Throughput` once, when the last timed
    iteration has ended (None before and after).
    """

    def __init__(self, start_iter: int, skip: int = SKIP_ITERATIONS, measure: int = MEASURE_ITERATIONS) -> None:
        if skip < 1 or measure < 1:
            raise ValueError(f"skip and measure must be at least 1, got {skip}, {measure}")
        self.begin = start_iter + skip
        self.end = self.begin + measure
        self._t0: Optional[float] = None

    def observe(self, done: int, elapsed: float) -> Optional[Throughput]:
        """``done``: iterations trained in all (the run's 1-based iteration); ``elapsed``: seconds since start."""
        if done == self.begin:
            self._t0 = elapsed
        elif done == self.end and self._t0 is not None:
            return Throughput(self.end - self.begin, elapsed - self._t0, done, elapsed)
        return None


def fit_max_iter(measured: Throughput, budget: float, safety: float = SAFETY) -> int:
    """The iteration count that ends training at ~``safety * budget`` seconds: the iterations done plus those
    the rest of the budget holds at the measured speed (never fewer than done: then the run ends at once)."""
    remaining = max(0.0, budget - measured.elapsed)
    extra = remaining * measured.per_second * safety
    return measured.done + (int(math.floor(extra)) if math.isfinite(extra) else 0)


def scale_steps(steps: Sequence[int], nominal: int, max_iter: int) -> List[int]:
    """Step decays at the same fractions of a ``max_iter``-iteration run as of the ``nominal`` one."""
    return [max(1, int(round(s * max_iter / nominal))) for s in steps]


def fit_record(measured: Throughput, images_per_iteration: int, budget: float, nominal: int) -> Dict[str, Any]:
    """What the checkpoint's config keeps of the choice (``max_iter_fit``): plain numbers (weights_only-safe)."""
    return {"images_per_s": measured.per_second * images_per_iteration, "iterations_timed": measured.iterations,
            "seconds_timed": measured.seconds, "at_iteration": measured.done, "time_budget": float(budget),
            "nominal_max_iter": int(nominal)}


def share_from_main(measured: Throughput, dist: DistInfo, device: torch.device) -> Throughput:
    """Rank 0's timing on every rank (each rank timed itself at the same iteration; one choice for all)."""
    if not dist.enabled:
        return measured
    values = torch.tensor([measured.iterations, measured.seconds, measured.elapsed], dtype=torch.float64,
                          device=device) * float(dist.is_main)
    iterations, seconds, elapsed = all_reduce_sum(values, dist).tolist()
    return Throughput(int(round(iterations)), seconds, measured.done, elapsed)
