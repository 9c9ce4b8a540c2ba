"""Encoding a video file: RGB frames piped into ffmpeg's H.264 encoder, the source's audio added, atomically."""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from fractions import Fraction
from typing import Any, List, Optional, Tuple

import numpy as np

from utils.errors import NoSpaceError, UserError, no_space_error, says_no_space
from utils.io import atomic_write
from utils.media.ffmpeg import (OWN_SESSION, VIDEO_EXTENSIONS, StderrTail, ffmpeg_exe, last_error_line,
                                probe_audio_codecs, stop_process)

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


_PCM = {"pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be", "pcm_f32le", "pcm_f32be",
        "pcm_f64le", "pcm_f64be", "pcm_u8"}
# Audio codecs each container carries in a standard, widely played way: these are copied, others re-encoded.
# MP4 (ISO/IEC 14496-14 and the MP4 registration authority): AAC, MP3, ALAC, AC-3, E-AC-3 (Vorbis has no MP4
# mapping; Opus / FLAC / PCM-in-MP4 mappings are recent and many players refuse them). QuickTime adds PCM.
# Matroska defines a codec ID for nearly everything; AVI's WAVE format tags: PCM, MP3, MP2, AC-3.
CARRIED_AUDIO = {
    ".mp4": {"aac", "mp3", "alac", "ac3", "eac3"},
    ".mov": {"aac", "mp3", "alac", "ac3", "eac3"} | _PCM,
    ".mkv": {"aac", "mp3", "mp2", "ac3", "eac3", "dts", "truehd", "flac", "vorbis", "opus", "alac"} | _PCM,
    ".avi": {"mp3", "mp2", "ac3", "pcm_s16le", "pcm_u8"},
}
# What others become: AAC, except in AVI, whose standard lossy codec is MP3.
_REENCODE = {".avi": ("libmp3lame", "MP3")}


def audio_encoder(codec: str, ext: str) -> Optional[Tuple[str, str]]:
    """None when audio in ``codec`` can be copied into a ``ext`` file as is; else ``(ffmpeg encoder, name)``."""
    if codec in CARRIED_AUDIO[ext]:
        return None
    return _REENCODE.get(ext, ("aac", "AAC"))


def _umask_mode(mode: int = 0o666) -> int:
    """``mode`` as a plain ``open()`` would create it under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


class SoundNotWritten(NoSpaceError):
    """The disk filled up while the sound was being added: the video is in place under ``path`` without sound.
    ``kept`` says what was saved (the one-line message of ``utils.errors.no_space_error``)."""

    def __init__(self, path: str, kept: str = "the video was kept without sound") -> None:
        super().__init__(no_space_error(path, kept=kept).message, path)


class VideoWriter:
    """Encode RGB frames into an H.264 file, atomically, keeping size and fps exactly.

    The video is encoded under a temporary name beside ``path``; on ``close()`` the audio of ``audio_from``
    (if given and it has any) is added whole, every stream: copied when the container carries its codec in a
    standard way (``CARRIED_AUDIO``), re-encoded otherwise, and the result is renamed to ``path``. The video is
    never cut to the audio's length; set ``audio_until`` (seconds) before closing to trim the audio instead
    (e.g. when only the first frames were written). ``abort()`` (or leaving a
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
        self.audio_until: Optional[float] = None
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
                os.chmod(self._video_tmp, _umask_mode())  # it becomes the output when the sound can't be added
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
            raise self._encode_error(last_error_line(self._log.text()) or str(exc)) from None
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
                raise self._encode_error(last_error_line(self._log.text()))
            if self.frames_written == 0:
                raise UserError(f"no frames to write to {self.path}")
            if self._video_tmp != self._final_tmp:
                self._mux_audio()
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack.close()  # renames the finished file into place, removes the intermediate

    def _encode_error(self, reason: str) -> UserError:
        if says_no_space(reason):
            return no_space_error(self.path)
        return UserError(f"could not write video {self.path} ({reason}) — check free disk space and the output path")

    def abort(self) -> None:
        """Stop encoding and remove every temporary file; ``path`` is left untouched."""
        if self._closed:
            return
        self._closed = True
        stop_process(self._proc)
        exc = RuntimeError("aborted")
        self._stack.__exit__(type(exc), exc, None)

    def _mux_audio(self) -> None:
        """Add every audio stream of ``audio_from`` to the encoded video (into the final temporary file)."""
        assert self.audio_from is not None
        ext = os.path.splitext(self.path)[1].lower()
        codecs = probe_audio_codecs(self.audio_from)
        trim = ["-t", f"{self.audio_until:.6f}"] if self.audio_until is not None else []
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error", "-i", self._video_tmp,
               *trim, "-i", self.audio_from, "-map", "0:v:0", "-map", "1:a?", "-c:v", "copy", *self._meta]
        plans = [[(self.audio_codec, "") if self.audio_codec else audio_encoder(c, ext) for c in codecs]]
        if any(e is None for e in plans[0]):  # a copy the muxer still refuses: re-encode everything
            plans.append([_REENCODE.get(ext, ("aac", "AAC"))] * len(codecs))
        tail = ["-movflags", "+faststart"] if ext in (".mp4", ".mov") else []
        for plan in plans:
            codec_args = [a for i, e in enumerate(plan) for a in (f"-c:a:{i}", e[0] if e else "copy")]
            log = self._run_mux(cmd + codec_args + tail)
            if log is None:
                encoded = sorted({f"{c} → {e[1]}" for c, e in zip(codecs, plan) if e and e[1]})
                if encoded:
                    self.notes.append(f"the input's audio ({', '.join(encoded)}) was re-encoded: {ext} has no "
                                      "standard place for the original codec")
                return
            if says_no_space(log):
                break
        if says_no_space(log):
            os.replace(self._video_tmp, self.path)  # complete, only silent: better than nothing
            raise SoundNotWritten(self.path)
        self.notes.append(f"the audio could not be copied ({last_error_line(log)}); the output has no sound")
        os.replace(self._video_tmp, self._final_tmp)

    def _run_mux(self, cmd: List[str]) -> Optional[str]:
        """Run one mux attempt into the final temporary file; None on success, else ffmpeg's log."""
        proc = subprocess.run(cmd + [self._final_tmp], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        return None if proc.returncode == 0 else proc.stderr.decode("utf-8", "replace")

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
