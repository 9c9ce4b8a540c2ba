"""A full disk (or quota) during training: the CSV log and the checkpoints fail with one line naming the file.

Injected: the training code's own ``open`` is replaced by one whose file refuses to write (OSError ENOSPC /
EDQUOT, as the kernel reports it), so the real error path — torch.save into a file object, the csv writer's
flush — is exercised without filling a disk.
"""
import errno
import os

import pytest
import torch

import train
import utils.training.checkpoints as checkpoints
import utils.training.logs as logs
from train_helpers import TINY, make_tiny_dataset
from utils.errors import NoSpaceError, run_cli
from utils.training.checkpoints import write_checkpoint


class RefusingFile:
    """A file object whose data never reaches the disk: ``write`` (or, buffered, ``flush``) raises ``err``."""

    def __init__(self, real, err: int, on_write: bool) -> None:
        self.real, self.err, self.on_write = real, err, on_write

    def _fail(self):
        raise OSError(self.err, os.strerror(self.err))

    def write(self, data):
        if self.on_write:
            self._fail()
        return len(data)

    def flush(self):
        self._fail()

    def close(self):
        self.real.close()
        self._fail()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()
        return False

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")), num=4)


def test_full_disk_while_appending_to_the_csv_log_is_one_line_naming_it(data_root, tmp_path, monkeypatch, capsys):
    def open_refusing_appends(path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        return RefusingFile(real, errno.ENOSPC, on_write=False) if "a" in mode else real

    monkeypatch.setattr(logs, "open", open_refusing_appends, raising=False)
    argv = TINY + ["--dataset_root", data_root, "--save_folder", str(tmp_path), "--max_iter", "2",
                   "--no-tensorboard"]
    with pytest.raises(SystemExit) as exc:
        run_cli(train.main, argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    csv_path = os.path.join(str(tmp_path), "ssd300_custom_log.csv")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no space left on device while writing {csv_path} — free some space or choose "
                      "another folder"]
    assert "Traceback" not in err


def test_quota_exceeded_while_saving_a_checkpoint_names_it_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "ssd300_custom_2.pth")
    pointer = str(tmp_path / "ssd300_custom_latest.txt")
    write_checkpoint({"model": {"w": torch.zeros(3)}, "iteration": 1}, path, pointer)

    def open_refusing_binary(p, mode="r", *args, **kwargs):
        real = open(p, mode, *args, **kwargs)
        return RefusingFile(real, errno.EDQUOT, on_write=True) if "b" in mode else real

    monkeypatch.setattr(checkpoints, "open", open_refusing_binary, raising=False)
    with pytest.raises(NoSpaceError) as exc:
        write_checkpoint({"model": {"w": torch.ones(3)}, "iteration": 2}, path, pointer)
    assert exc.value.message == (f"no space left on device while writing {path} (disk quota exceeded) — free some "
                                 "space or choose another folder")
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["iteration"] == 1  # the previous checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["ssd300_custom_2.pth", "ssd300_custom_latest.txt"]  # no temp file
