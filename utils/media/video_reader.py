"""Decoding a video file: RGB frames streamed from an ffmpeg subprocess, one at a time.

Frames are RGB ``uint8 [H, W, 3]`` arrays, C-contiguous and writable (the consumer may draw on them).
Memory stays flat for any video length: frames are read one at a time from a pipe and nothing is kept.
Variable-frame-rate inputs come out resampled to their nominal rate (ffmpeg's constant-rate output for raw video).
"""
from __future__ import annotations

import contextlib
import subprocess
import threading
from typing import Iterator, List, Optional, Tuple

import numpy as np

from utils.errors import UserError
from utils.media.ffmpeg import (OWN_SESSION, StderrTail, ffmpeg_exe, is_stream_url, last_error_line, probe_video,
                                stop_process, stream_options)

class VideoReader:
    """Iterate the frames of a video file as RGB ``uint8 [H, W, 3]`` arrays, streaming from ffmpeg.

    Raises UserError (naming the file) for a missing / empty / unreadable / not-a-video input
    (at construction), and while iterating for a video that yields no frames or that ends early
    with decoding errors (truncated or corrupt). ``warnings`` collects ffmpeg's error lines when
    the video decoded completely despite them (e.g. a few damaged packets).

    ``path`` may also be a live stream (``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://`` ...): it has no end,
    so ``max_frames``, ``max_seconds`` (of video) or ``stop()`` (e.g. on Ctrl-C) end it; the frames read until then
    are all delivered. ``max_seconds`` applies to files as well.
    """

    def __init__(self, path: str, max_frames: Optional[int] = None, max_seconds: Optional[float] = None) -> None:
        self.info = probe_video(path)
        self.path = path
        self.is_stream = is_stream_url(path)
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self._stopped = threading.Event()
        self.frames_read = 0
        self.warnings: List[str] = []
        self._proc: Optional[subprocess.Popen] = None
        self._frames: Optional[Iterator[np.ndarray]] = None
        self._peeked: Optional[np.ndarray] = None

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the decoded frames."""
        return self.info.width, self.info.height

    def peek(self) -> np.ndarray:
        """Decode the first frame now (a zero-frame or undecodable video fails here, before any
        expensive setup); iteration still starts with this frame."""
        if self._peeked is None:
            if self._frames is None:
                self._frames = self._decode()
            self._peeked = next(self._frames)  # never StopIteration: zero frames raise UserError
        return self._peeked

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._frames is None:
            self._frames = self._decode()
        frames, self._frames = self._frames, None  # one pass per reader start
        if self._peeked is not None:
            first, self._peeked = self._peeked, None
            yield first
        yield from frames

    def _decode(self) -> Iterator[np.ndarray]:
        w, h = self.size
        nbytes = w * h * 3
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", *stream_options(self.path), "-i", self.path,
               "-map", f"0:v:{self.info.stream}", "-an", "-sn", "-dn"]
        if self.max_frames is not None:
            cmd += ["-frames:v", str(int(self.max_frames))]
        if self.max_seconds is not None:
            cmd += ["-t", f"{self.max_seconds:.6f}"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0, **OWN_SESSION)
        self._proc = proc
        log = StderrTail(proc.stderr)
        try:
            while True:
                buf = bytearray(nbytes)  # fresh buffer per frame: the consumer owns (and draws on) it
                view = memoryview(buf)
                got = 0
                while got < nbytes:
                    n = proc.stdout.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got == 0 or self._stopped.is_set():  # the end, or stop(): a partial frame is dropped
                    break
                if got < nbytes:  # ffmpeg died mid-frame
                    proc.wait()
                    raise self._corrupt(log.text())
                self.frames_read += 1
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
            rc = proc.wait()
            if not self._stopped.is_set():
                self._check_end(rc, log.text())
        finally:
            stop_process(proc)  # kills it if we stop early (max_frames, failure); else just reaps it
            self._proc = None

    def stop(self) -> None:
        """End the frames now (from any thread; a live stream's Ctrl-C): decoding stops, iteration ends cleanly
        after the frames already read."""
        self._stopped.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def _check_end(self, rc: int, log: str) -> None:
        if self.frames_read == 0:
            raise UserError(f"no video frames could be decoded from {self.path} — the video has zero "
                            "frames or is corrupt; check the file")
        if self.is_stream:  # a live stream ends when its sender stops: what came is what there is
            if log.strip():
                self.warnings.append(last_error_line(log))
            return
        expected = self.info.n_frames
        if self.max_frames is not None and expected is not None:
            expected = min(expected, self.max_frames)
        # A complete file decodes to (almost) its announced length; tolerate rounding of the
        # duration and a few undecodable packets, not a missing tail.
        short = expected is not None and self.frames_read < expected * 0.98 - 1
        if rc != 0 or (short and log.strip()):
            raise self._corrupt(log)
        if log.strip():
            self.warnings.append(last_error_line(log))

    def _corrupt(self, log: str) -> UserError:
        total = f" of ~{self.info.n_frames}" if self.info.n_frames else ""
        reason = f" ({last_error_line(log)})" if log.strip() else ""
        return UserError(f"video is truncated or corrupt: {self.path} — decoding failed after "
                         f"{self.frames_read}{total} frames{reason}; re-download or re-encode it")

    def close(self) -> None:
        """Stop decoding (kills ffmpeg); safe to call at any time."""
        if self._frames is not None:
            with contextlib.suppress(Exception):
                self._frames.close()
            self._frames = None
        if self._proc is not None:
            stop_process(self._proc)
