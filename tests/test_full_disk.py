"""A full disk while writing any output: one line naming the file, exit status 1, the previous file intact and no
temporary file left behind; and every output gets the umask's permissions.

Two ways to fill a disk: a real one (a small tmpfs the test mounts; needs root, skipped with the reason otherwise)
and injected ENOSPC (a write that raises OSError(errno.ENOSPC)), which runs everywhere.
"""
import errno
import io
import json
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch

import utils.io
import utils.loading.checkpoint as checkpoint
from tests.disk_helpers import small_disk
from utils.errors import NoSpaceError, UserError, says_no_space
from utils.io import atomic_write, current_umask, reporting_no_space
from utils.loading.checkpoint import read_checkpoint, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_SPACE = "no space left on device while writing"
# what torch.save's C++ writer raises on a full disk when given a path (torch 2.x)
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


@pytest.fixture()
def small_fs(tmp_path):
    """A 1 MiB tmpfs mounted on a fresh folder (root only); unmounted afterwards."""
    with small_disk(tmp_path / "small_fs", "1m", "; the injected-ENOSPC tests cover the same code") as folder:
        yield folder


def _big_state():
    return {"w": torch.arange(400_000, dtype=torch.float32)}  # 1.6 MB: more than the 1 MiB tmpfs holds


def _leftovers(folder, keep):
    return sorted(set(os.listdir(folder)) - set(keep))


def _run_cli_script(tmp_path, body):
    """Run ``body`` (the inside of ``main``) under utils.errors.run_cli in a subprocess; (exit status, stderr)."""
    script = tmp_path / f"cli_{uuid.uuid4().hex[:8]}.py"
    script.write_text(textwrap.dedent("""
        import errno, os, sys
        sys.path.insert(0, {repo!r})
        from utils.errors import run_cli

        def main(argv):
        {body}

        run_cli(main)
    """).format(repo=REPO, body=textwrap.indent(textwrap.dedent(body), "    ")))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    return res.returncode, res.stderr


# ---------------------------------------------------------------------------------------------------------------
# a real full disk (tmpfs)
# ---------------------------------------------------------------------------------------------------------------

def test_checkpoint_on_full_disk_keeps_previous_checkpoint_and_pointer(small_fs):
    path = str(small_fs / "ssd300_custom_2.pth")
    pointer = small_fs / "ssd300_custom_latest.txt"
    save_checkpoint({"w": torch.ones(3)}, path)
    pointer.write_text("ssd300_custom_2.pth\n")
    with pytest.raises(UserError) as exc:
        save_checkpoint(_big_state(), path)
    assert exc.value.message.startswith(f"{NO_SPACE} {path} — ")
    assert exc.value.code == 1
    assert torch.equal(read_checkpoint(path)["w"], torch.ones(3))
    assert pointer.read_text() == "ssd300_custom_2.pth\n"
    assert _leftovers(small_fs, [os.path.basename(path), pointer.name]) == []


def test_torch_save_to_a_path_inside_atomic_write_on_full_disk(small_fs):
    """The pattern train.py's checkpoint writer uses: torch's own RuntimeError is recognised as a full disk."""
    path = str(small_fs / "ssd300_custom_4.pth")
    with pytest.raises(UserError, match=NO_SPACE) as exc:
        with atomic_write(path, suffix=".tmp") as tmp:
            torch.save(_big_state(), tmp)
    assert path in exc.value.message
    assert os.listdir(small_fs) == []


def test_json_on_full_disk(small_fs):
    path = small_fs / "results.json"
    path.write_text('{"mAP": 0.5}')
    with pytest.raises(UserError, match=NO_SPACE) as exc:
        with atomic_write(str(path)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"boxes": [[0.5] * 4] * 100_000}, fh)
    assert str(path) in exc.value.message
    assert json.loads(path.read_text()) == {"mAP": 0.5}
    assert os.listdir(small_fs) == ["results.json"]


def test_numpy_tofile_on_full_disk(small_fs):
    """How images are written (cv2.imencode + ndarray.tofile): numpy's OSError names no errno."""
    path = small_fs / "frame.jpg"
    with pytest.raises(UserError, match=f"{NO_SPACE} {path}"):
        with atomic_write(str(path), suffix=".jpg") as tmp:
            np.zeros(2_000_000, dtype=np.uint8).tofile(tmp)
    assert os.listdir(small_fs) == []


def test_run_cli_one_line_for_a_plain_write_on_full_disk(small_fs, tmp_path):
    out = small_fs / "log.csv"
    code, err = _run_cli_script(tmp_path, f"""
        with open({str(out)!r}, "w") as fh:
            fh.write("x" * 2_000_000)
    """)
    assert code == 1
    assert err.startswith(f"error: {NO_SPACE} ") and err.count("\n") == 1, err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------
# injected ENOSPC / EDQUOT (runs everywhere)
# ---------------------------------------------------------------------------------------------------------------

def test_injected_enospc_in_atomic_write_keeps_old_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(UserError) as exc:
        with atomic_write(str(path)) as tmp:
            with open(tmp, "w") as fh:
                fh.write("new, half written")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    assert exc.value.message == f"{NO_SPACE} {path} — free some space or choose another folder"
    assert exc.value.code == 1
    assert isinstance(exc.value, NoSpaceError) and exc.value.path == str(path)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_quota_exceeded_is_reported_as_no_space(tmp_path):
    with pytest.raises(UserError, match=f"{NO_SPACE} .*disk quota exceeded"):
        with atomic_write(str(tmp_path / "a.txt")):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert os.listdir(tmp_path) == []


class _FullDiskFile(io.FileIO):
    """A file whose writes fail with ENOSPC once ``limit`` bytes are written, as on a full disk."""
    limit = 1000

    def write(self, data):
        if self.tell() + len(memoryview(data).cast("B")) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_injected_enospc_in_save_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ssd300_VOC_10.pth")
    save_checkpoint({"w": torch.ones(3)}, path)
    monkeypatch.setattr(checkpoint, "open", lambda p, mode: _FullDiskFile(p, mode.replace("b", "")), raising=False)
    with pytest.raises(UserError, match=f"{NO_SPACE} {path}"):
        save_checkpoint(_big_state(), path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ssd300_VOC_10.pth"]


def test_torch_writer_error_counts_as_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch):
    monkeypatch.setattr(utils.io, "free_bytes", lambda folder: 0)
    with pytest.raises(UserError, match=NO_SPACE):
        with atomic_write(str(tmp_path / "a.pth")):
            raise RuntimeError(TORCH_FULL_DISK)
    monkeypatch.setattr(utils.io, "free_bytes", lambda folder: 10 << 30)
    with pytest.raises(RuntimeError, match="unexpected pos"):   # another write failure: not misreported
        with atomic_write(str(tmp_path / "a.pth")):
            raise RuntimeError(TORCH_FULL_DISK)
    assert os.listdir(tmp_path) == []


def test_write_error_without_errno_counts_only_when_the_disk_is_full(tmp_path, monkeypatch):
    monkeypatch.setattr(utils.io, "free_bytes", lambda folder: 0)
    with pytest.raises(UserError, match=NO_SPACE):
        with atomic_write(str(tmp_path / "a.jpg")):
            raise OSError("26399 requested and 0 written")
    monkeypatch.setattr(utils.io, "free_bytes", lambda folder: 10 << 30)
    with pytest.raises(OSError, match="requested and 0 written"):
        with atomic_write(str(tmp_path / "a.jpg")):
            raise OSError("26399 requested and 0 written")
    assert os.listdir(tmp_path) == []


def test_other_errors_pass_through_and_remove_the_temporary_file(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with atomic_write(str(tmp_path / "a.txt")):
            raise ValueError("boom")
    with pytest.raises(OSError) as exc:
        with atomic_write(str(tmp_path / "b.txt")):
            raise OSError(errno.EIO, "I/O error")
    assert exc.value.errno == errno.EIO
    assert os.listdir(tmp_path) == []


def test_reporting_no_space_for_files_written_in_place(tmp_path):
    path = str(tmp_path / "train_log.csv")
    with pytest.raises(UserError, match=f"{NO_SPACE} {path}"):
        with reporting_no_space(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(KeyError):
        with reporting_no_space(path):
            raise KeyError("not a disk problem")


def test_run_cli_names_the_file_of_a_stray_enospc(tmp_path):
    code, err = _run_cli_script(tmp_path, """
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/detections.json")
    """)
    assert (code, err) == (1, f"error: {NO_SPACE} /data/out/detections.json — free some space or choose another "
                               "folder\n")


def test_run_cli_sees_enospc_behind_torch_runtime_error(tmp_path):
    """torch.save into a file object wraps the file's OSError in a RuntimeError: still one line."""
    code, err = _run_cli_script(tmp_path, """
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    """)
    assert code == 1
    assert err.startswith(f"error: {NO_SPACE} ") and err.count("\n") == 1, err


def test_run_cli_reports_a_writer_threads_full_disk_once(tmp_path):
    """TensorBoard's event writer is a thread: its ENOSPC is one line and exit 1, not a thread traceback."""
    code, err = _run_cli_script(tmp_path, """
        import threading

        def writer():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/tb/events.out.tfevents")

        t = threading.Thread(target=writer)
        t.start()
        t.join()
        return 0
    """)
    assert (code, err) == (1, f"error: {NO_SPACE} /runs/tb/events.out.tfevents — free some space or choose "
                               "another folder\n")


def test_a_tools_message_about_a_full_disk_counts(tmp_path):
    """e.g. ffmpeg's stderr carried in an exception's text."""
    with pytest.raises(UserError, match=NO_SPACE):
        with atomic_write(str(tmp_path / "out.mp4"), suffix=".mp4"):
            raise RuntimeError("ffmpeg: av_interleaved_write_frame(): No space left on device")
    assert says_no_space("Error writing trailer: Disk quota exceeded")
    assert not says_no_space("Invalid data found when processing input")
    assert os.listdir(tmp_path) == []


def test_run_cli_still_shows_a_traceback_for_other_errors(tmp_path):
    code, err = _run_cli_script(tmp_path, """
        raise OSError(errno.EIO, "I/O error")
    """)
    assert code == 1
    assert "Traceback" in err and "no space" not in err


# ---------------------------------------------------------------------------------------------------------------
# permissions: the umask's, like a plain open()
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_atomic_write_gives_the_same_mode_as_open(tmp_path, umask):
    assert current_umask() == umask
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    with atomic_write(str(tmp_path / "atomic.txt")) as tmp, open(tmp, "w") as fh:
        fh.write("x")
    save_checkpoint({"w": torch.ones(1)}, str(tmp_path / "ckpt.pth"))
    expected = 0o666 & ~umask
    assert _mode(tmp_path / "plain.txt") == expected
    assert _mode(tmp_path / "atomic.txt") == expected
    assert _mode(tmp_path / "ckpt.pth") == expected


def test_mode_fixed_even_when_the_block_replaces_the_temporary_file(tmp_path, umask):
    """A tool that writes its own private file over the temporary one (mode 0600) still yields the umask's mode."""
    with atomic_write(str(tmp_path / "video.mp4"), suffix=".mp4") as tmp:
        os.remove(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    assert _mode(tmp_path / "video.mp4") == 0o666 & ~umask
