"""Test hooks: read once from the environment by the CLI (train.py ``main``) and passed into the trainer.

* ``SSD_TEST_INJECT_NAN_AT=5`` or ``5,6`` or ``5-9``: the loss of those (1-based) iterations is made NaN, to test
  the skipping of non-finite steps and the stop after ``--max_nonfinite`` in a row;
* ``SSD_TEST_SAVE_DELAY=0.2``: sleep that many seconds inside each checkpoint write (before the rename), so that
  the crash-safety test can kill a run in the middle of a write.

Both unset (the normal case) means no effect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import FrozenSet, Mapping, Optional, Set

INJECT_NAN_AT = "SSD_TEST_INJECT_NAN_AT"
SAVE_DELAY = "SSD_TEST_SAVE_DELAY"


@dataclass(frozen=True)
class TestHooks:
    """``nan_at``: iterations (1-based) whose loss is made NaN; ``save_delay``: seconds slept per checkpoint write."""

    __test__ = False  # not a pytest test class despite the name

    nan_at: FrozenSet[int] = field(default_factory=frozenset)
    save_delay: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "TestHooks":
        return cls(frozenset(parse_iterations(environ.get(INJECT_NAN_AT))),
                   float(environ.get(SAVE_DELAY, "0") or 0))


def parse_iterations(value: Optional[str]) -> Set[int]:
    """``5``, ``5,6`` or ``5-9`` → the set of iteration numbers (empty for None / '')."""
    out: Set[int] = set()
    for part in (value or "").replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out
