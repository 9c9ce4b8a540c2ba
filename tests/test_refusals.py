"""A checkpoint whose pickle would run code is refused for that reason, whatever torch's wording, and nothing in it
runs; truncated and foreign files keep their own messages.

Every payload would create a marker file if it ran (harmless), and each test asserts the marker does not exist.
"""
import builtins
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.io import pickle_globals
from utils.loading.checkpoint import load_model, read_checkpoint


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Popen(_System):
    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.marker],))


class _Eval(_System):
    def __reduce__(self):
        return (builtins.eval, (f"open({self.marker!r}, 'w').close()",))


class _Custom:
    """A plain class (no __reduce__): unpickling it would import this module and call __setstate__."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        open(state["marker"], "w").close()
        self.__dict__.update(state)


PAYLOADS = {  # payload class -> the callable the message names
    "os.system": (_System, f"{os.system.__module__}.system"),      # posix.system on Linux
    "subprocess.Popen": (_Popen, "subprocess.Popen"),
    "builtins.eval": (_Eval, "builtins.eval"),
    "custom class": (_Custom, f"{__name__}._Custom"),
}
FORMATS = {
    "zip": lambda obj, path: torch.save(obj, path),
    "legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "raw pickle (protocol 4)": lambda obj, path: open(path, "wb").write(pickle.dumps(obj, protocol=4)),
}


def _evil_checkpoint(tmp_path, payload, fmt="zip"):
    cls, _ = PAYLOADS[payload]
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    FORMATS[fmt]({"vgg.0.weight": torch.zeros(2), "extra": cls(str(marker))}, str(path))
    return str(path), marker


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_code_carrying_checkpoint_is_refused_for_that_reason(tmp_path, payload, fmt):
    path, marker = _evil_checkpoint(tmp_path, payload, fmt)
    with pytest.raises(UserError) as exc:
        read_checkpoint(path)
    msg = exc.value.message
    assert msg.startswith(f"refusing to load {path}: it contains Python objects that could run code"), msg
    assert PAYLOADS[payload][1] in msg
    assert "not a PyTorch checkpoint" not in msg
    assert not marker.exists()


def test_refusal_through_load_model(tmp_path):
    path, marker = _evil_checkpoint(tmp_path, "os.system")
    with pytest.raises(UserError, match="refusing to load"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("wording", [
    "Weights only load failed. Trying to load unsupported GLOBAL posix.system whose module posix is blocked.",
    "Weights only load failed. Unsupported global: GLOBAL posix.system was not an allowed global by default.",
    "Weights only load failed: something torch has not said yet",
])
def test_refusal_does_not_depend_on_torchs_wording(tmp_path, monkeypatch, wording):
    path, marker = _evil_checkpoint(tmp_path, "os.system")

    def load(*args, **kwargs):
        raise pickle.UnpicklingError(wording)

    monkeypatch.setattr(torch, "load", load)
    with pytest.raises(UserError, match=f"refusing to load .*{os.system.__module__}.system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_pickle_globals_reads_without_running(tmp_path):
    path, marker = _evil_checkpoint(tmp_path, "subprocess.Popen")
    found = pickle_globals(path)
    assert "subprocess.Popen" in found and "torch._utils._rebuild_tensor_v2" in found
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# truncated and foreign files keep their own messages
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_checkpoint_is_not_called_code(tmp_path, fmt):
    good = tmp_path / "good.pth"
    FORMATS[fmt]({"w": torch.arange(1000.0)}, str(good))
    data = good.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UserError, match="truncated") as exc:
        read_checkpoint(str(path))
    assert "refusing" not in exc.value.message and str(path) in exc.value.message


def _text(path):
    path.write_text("epoch,loss\n1,0.5\n")


def _zip(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a model")


def _npy(path):
    with open(path, "wb") as fh:
        np.save(fh, np.arange(10, dtype=np.float32))


def _npy_objects(path):  # an object array: its body is a pickle, behind numpy's header
    with open(path, "wb") as fh:
        np.save(fh, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("make", [_text, _zip, _npy, _npy_objects])
def test_foreign_file_keeps_its_own_message(tmp_path, make):
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(UserError) as exc:
        read_checkpoint(str(path))
    msg = exc.value.message
    # "not a PyTorch checkpoint (or truncated): <path>" or "cannot read checkpoint <path>: not a PyTorch checkpoint
    # or truncated (<error>)", depending on where torch gives up
    assert "not a PyTorch checkpoint" in msg and str(path) in msg
    assert "refusing" not in msg
