"""Encoding a video file: RGB frames piped into ffmpeg's H.264 encoder, the source's audio added, atomically."""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from fractions import Fraction
from typing import Any, List, Optional

import numpy as np

from utils.errors import UserError
from utils.io import atomic_write
from utils.media.ffmpeg import (OWN_SESSION, VIDEO_EXTENSIONS, StderrTail, ffmpeg_exe, last_error_line,
                                stop_process)

DEFAULT_CRF = 23  # x264's own default: visually near-transparent at reasonable sizes


def crf_from_quality(quality: float) -> int:
    """Map imageio's ``quality`` scale (0 worst .. 10 best) onto x264's CRF (51 worst .. 0 best)."""
    if not 0 <= quality <= 10:
        raise UserError(f"--quality {quality} is out of range; use a value from 0 (smallest file) "
                        "to 10 (best quality)", code=2)
    return int(round((1.0 - quality / 10.0) * 51))


def check_video_output(path: str) -> None:
    """UserError unless ``path`` has an extension we can write video into."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        raise UserError(f"cannot write video to {path}: unsupported extension {ext or '(none)'!r} — "
                        f"use one of {', '.join(VIDEO_EXTENSIONS)}", code=2)


def video_pix_fmt(width: int, height: int) -> str:
    """x264's yuv420p needs even sizes; odd ones keep their exact size with 4:4:4 chroma instead
    of being padded or scaled (some hardware players only play 4:2:0)."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


class VideoWriter:
    """Encode RGB frames into an H.264 file, atomically, keeping size and fps exactly.

    The video is encoded under a temporary name beside ``path``; on ``close()`` the input's audio
    (if ``audio_from`` is given and has audio) is stream-copied in (no re-encode; AAC only if the
    container refuses the codec) and the result is renamed to ``path``. ``abort()`` (or leaving a
    ``with`` block by an exception) removes every temporary file: an interrupted run never leaves
    a half-written file under ``path``.

    ``audio_codec`` forces the audio's codec (e.g. ``"aac"`` for a WAV source); ``reproducible`` leaves out
    metadata that would differ between runs (same frames, same bytes).
    """

    def __init__(self, path: str, width: int, height: int, fps: Fraction | float,
                 crf: int = DEFAULT_CRF, audio_from: Optional[str] = None,
                 preset: str = "veryfast", audio_codec: Optional[str] = None, reproducible: bool = False) -> None:
        check_video_output(path)
        if not 0 <= crf <= 51:
            raise UserError(f"--crf {crf} is out of range; use 0 (lossless) .. 51 (smallest)", code=2)
        fps = Fraction(fps).limit_denominator(100000) if not isinstance(fps, Fraction) else fps
        if fps <= 0:
            fps = Fraction(25)  # container didn't say (e.g. some raw streams); ffmpeg's own default
        self.path = path
        self.width, self.height, self.fps = int(width), int(height), fps
        self.audio_from = audio_from
        self.audio_codec = audio_codec
        self._meta = ["-map_metadata", "-1", "-fflags", "+bitexact"] if reproducible else []
        self.frames_written = 0
        self.notes: List[str] = []
        self._closed = False
        self._stack = contextlib.ExitStack()
        ext = os.path.splitext(path)[1].lower()
        self._final_tmp = self._stack.enter_context(atomic_write(path, suffix=ext))
        try:
            if audio_from is not None:
                # video-only intermediate beside the output (same filesystem, removed on close/abort)
                fd, self._video_tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.video.",
                                                       suffix=ext, dir=os.path.dirname(self._final_tmp))
                os.close(fd)
                self._stack.callback(remove_quietly, self._video_tmp)
            else:
                self._video_tmp = self._final_tmp
            self._proc = self._start_encoder(ext, crf, preset)
        except BaseException as exc:
            # an exception passed in makes atomic_write delete its temp instead of renaming it
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._log = StderrTail(self._proc.stderr)

    def _start_encoder(self, ext: str, crf: int, preset: str) -> subprocess.Popen:
        """ffmpeg reading raw RGB frames on stdin, writing H.264 (video only) to the intermediate file."""
        fps = self.fps
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
               "-r", f"{fps.numerator}/{fps.denominator}", "-i", "-", "-an",
               "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)),
               "-pix_fmt", video_pix_fmt(self.width, self.height), *self._meta]
        if ext in (".mp4", ".mov"):
            cmd += ["-movflags", "+faststart"]
        cmd.append(self._video_tmp)
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, **OWN_SESSION)

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB ``uint8 [H, W, 3]`` frame of exactly the writer's size."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype} does not match the writer's "
                             f"({self.height}, {self.width}, 3) uint8")
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, OSError) as exc:
            self._proc.wait()
            raise UserError(f"could not write video {self.path} "
                            f"({last_error_line(self._log.text()) or exc}) — check free disk space "
                            "and the output path") from None
        self.frames_written += 1

    def close(self) -> None:
        """Finish encoding, add the audio, move the file into place."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._proc.stdin.close()
            rc = self._proc.wait()
            if rc != 0:
                raise UserError(f"could not write video {self.path} ({last_error_line(self._log.text())})"
                                " — check free disk space and the output path")
            if self.frames_written == 0:
                raise UserError(f"no frames to write to {self.path}")
            if self._video_tmp != self._final_tmp:
                self._mux_audio()
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack.close()  # renames the finished file into place, removes the intermediate

    def abort(self) -> None:
        """Stop encoding and remove every temporary file; ``path`` is left untouched."""
        if self._closed:
            return
        self._closed = True
        stop_process(self._proc)
        exc = RuntimeError("aborted")
        self._stack.__exit__(type(exc), exc, None)

    def _mux_audio(self) -> None:
        assert self.audio_from is not None
        base = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error",
                "-i", self._video_tmp, "-i", self.audio_from,
                "-map", "0:v:0", "-map", "1:a?", "-c:v", "copy", "-shortest", *self._meta]
        tail = ["-movflags", "+faststart"] if self.path.lower().endswith((".mp4", ".mov")) else []
        tries = [["-c:a", self.audio_codec]] if self.audio_codec else [["-c:a", "copy"], ["-c:a", "aac"]]
        for audio in tries:  # copy; AAC only if the container refuses it
            proc = subprocess.run(base + audio + tail + [self._final_tmp], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if proc.returncode == 0:
                if audio[1] != "copy" and not self.audio_codec:
                    self.notes.append(f"the input's audio codec can't go into "
                                      f"{os.path.splitext(self.path)[1]}; it was re-encoded to AAC")
                return
        self.notes.append("the audio could not be copied "
                          f"({last_error_line(proc.stderr.decode('utf-8', 'replace'))}); "
                          "the output has no sound")
        os.replace(self._video_tmp, self._final_tmp)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
