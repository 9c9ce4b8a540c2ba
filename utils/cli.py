"""What the command-line scripts share: the argument parser, ssd.pytorch's boolean flags, output-folder checks and
the model-runtime flags. Library code raises errors in its own terms; the wording for flags belongs here and in the
CLIs."""
from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from typing import Any, Callable, NoReturn, Optional

from utils.errors import UserError
from utils.io import nearest_existing_folder


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``UserError``, exit status 2, printed by ``run_cli``) that points
    at ``--help``, instead of the usage text followed by the message.

    ``command`` is how a user runs the script (``"train.py"``, ``"-m utils.export"``); it becomes ``prog``.
    """

    def __init__(self, command: str, **kwargs: Any) -> None:
        kwargs.setdefault("prog", command if not command.startswith("-m ") else f"python {command}")
        super().__init__(**kwargs)
        self.command = command

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        # a validator's "must ..." reads as "--flag must ...", the wording the README's troubleshooting table lists
        m = _RANGE_ERROR.match(message)
        if m:
            message = f"{m.group(1).split('/')[-1]} {m.group(2)}"
        raise UserError(f"{message} (see python {self.command} --help)", code=2)


# argparse words a failed type= as "argument -b/--batch_size: <what the validator raised>"
_RANGE_ERROR = re.compile(r"^argument (\S+): (must .*)$", re.S)


# ----------------------------------------------------------------------------------------------------------
# Validators: argparse ``type=`` functions shared by the CLIs. A malformed number keeps argparse's own wording
# ("invalid int value: 'x'"); an out-of-range one becomes "--flag must be ..., got X" (see Parser.error).
# ----------------------------------------------------------------------------------------------------------


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A ``type=`` accepting integers >= ``minimum`` ("must be at least 1" / "must be 0 or more")."""
    rule = "0 or more" if minimum == 0 else f"at least {minimum}"

    def check(text: Any) -> int:
        value = int(text)  # ValueError -> argparse's "invalid int value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    check.__name__ = "int"
    return check


def float_in(low: float, high: Optional[float] = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """A ``type=`` accepting finite floats in the interval (``high=None``: no upper bound), e.g.
    ``float_in(0, 1, high_open=True)`` -> "must be in [0, 1), got 1.0"."""
    if high is None:
        if low == 0:
            rule = "positive" if low_open else "0 or more"
        else:
            rule = f"greater than {low:g}" if low_open else f"at least {low:g}"
    else:
        rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(text: Any) -> float:
        value = float(text)  # ValueError -> argparse's "invalid float value"
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    check.__name__ = "float"
    return check


positive_int = int_at_least(1)
"""``--batch_size``, ``--top_k``, ``--max_images``, ``--max_iter`` ...: an integer >= 1."""
non_negative_int = int_at_least(0)
"""``--num_workers``: an integer >= 0."""
probability = float_in(0.0, 1.0)
"""A probability in [0, 1]."""
score_threshold = float_in(0.0, 1.0, high_open=True)
"""A detection score threshold in [0, 1) (1 would keep nothing)."""
non_negative_float = float_in(0.0)
"""A float >= 0 (weight decay, seconds ...)."""
positive_float = float_in(0.0, low_open=True)
"""A float > 0 (learning rate, ...)."""
batch_size = positive_int
"""THE ``--batch_size`` validator (eval.py, train.py, object_detection.py, ``--eval_batch_size``)."""


def str2bool(v: Any) -> bool:
    """ssd.pytorch's boolean flag values (``--cuda``, ``--cleanup``): yes/no, true/false, t/f, y/n, 1/0."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}")


def check_writable_folder(folder: str, what: str, remedy: str = "choose another folder") -> None:
    """UserError unless ``folder`` is (or can be created as) a writable folder; leaves nothing behind.

    Probed by creating a real file: permission bits say nothing for root or on read-only mounts.
    """
    base = nearest_existing_folder(folder)
    if not os.path.isdir(base):
        raise UserError(f"cannot create {what} {folder}: {base} is a file, not a folder — {remedy}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=base)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"{what} is not writable: {folder} ({exc.strerror or exc}) — {remedy} or fix its "
                        "permissions") from None


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """The model-runtime flags eval.py and object_detection.py share: --device, --amp, --compile, --backend,
    --precision, --threads (passed to :func:`utils.inference.open_predictor`, which checks how they combine)."""
    parser.add_argument("--device", default="auto", help="where the model runs: auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true",
                        help="fast mode: bf16 autocast on CPUs (fp16/bf16 on GPUs) + channels_last; the same as "
                             "--precision bf16 on PyTorch and OpenVINO")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (one-off 10-30 s compilation; faster on long runs)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                        help="model runtime; auto picks ONNX Runtime for .onnx files and OpenVINO for .xml files, "
                             "PyTorch otherwise; openvino runs the same .onnx on the CPU (pip install openvino; see "
                             "python -m utils.export)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default=None,
                        help="arithmetic: fp32; bf16 (PyTorch autocast or OpenVINO; needs a CPU with avx512_bf16 "
                             "or AMX to be fast); int8 (a file written by python -m utils.export MODEL --int8 "
                             "--calib DATASET_DIR, on onnxruntime or openvino); if not given, what the file is (int8 "
                             "for an int8 file, else fp32; bf16 with --amp)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for the model; if not given, the runtime's own choice")
