"""What the command-line scripts share: the argument parser, ssd.pytorch's boolean flags, output-folder checks and
the model-runtime flags. Library code raises errors in its own terms; the wording for flags belongs here and in the
CLIs."""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, NoReturn

from utils.errors import UserError


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
        raise UserError(f"{message} (see python {self.command} --help)", code=2)


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


def nearest_existing_folder(folder: str) -> str:
    """``folder`` itself, or its closest ancestor that exists (absolute path)."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


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
    """The model-runtime flags eval.py and object_detection.py share: --device, --amp, --compile, --backend."""
    parser.add_argument("--device", default="auto", help="where the model runs: auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true",
                        help="fast mode: bf16 autocast on CPUs (fp16/bf16 on GPUs) + channels_last")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (one-off 10-30 s compilation; faster on long runs)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                        help="model runtime; auto picks ONNX Runtime for .onnx files (see python -m utils.export)")
