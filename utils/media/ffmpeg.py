"""The ffmpeg binary and what we learn from it without decoding: probing a video's header, reading its log.

Why our own ``subprocess`` wrappers rather than ``imageio_ffmpeg.read_frames`` / ``write_frames``:
we need ffmpeg's exit status and its stderr (to tell a truncated or corrupt file from a complete
one, and to print one clear line instead of ffmpeg's log), which those generators don't expose.
Only the binary (``imageio_ffmpeg.get_ffmpeg_exe()``) is taken from imageio-ffmpeg.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Deque, Dict, List, Optional, Tuple

import imageio_ffmpeg

from utils.errors import UserError

# Containers we can write H.264 into (and copy most audio codecs into): the project's one list.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi")


# Network inputs ffmpeg reads as live streams.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
STREAM_TIMEOUT_S = 15  # no data for this long: the stream is considered down


def is_stream_url(path: str) -> bool:
    """True for ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://`` ... addresses."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", path)
    return bool(m) and m.group(1).lower() in STREAM_SCHEMES


def stream_options(path: str) -> List[str]:
    """ffmpeg input options for ``path``: a read timeout for network streams (so a dead one fails), none for
    files. RTSP has its own socket timeout option; the others use the generic I/O one (microseconds)."""
    if not is_stream_url(path):
        return []
    micros = str(STREAM_TIMEOUT_S * 1_000_000)
    return ["-timeout", micros] if path.lower().startswith("rtsp") else ["-rw_timeout", micros]


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What we know about a video before decoding it.

    ``width``/``height`` are those of the decoded frames (display rotation applied, as ffmpeg
    rotates on decode). ``fps`` is exact where ffmpeg's rounded figure is a known NTSC rate.
    ``n_frames`` is an estimate (duration x fps) or None when the container doesn't say. A variable frame rate
    video is decoded resampled to its nominal rate ``fps`` (frames repeated or dropped as ffmpeg's constant-rate
    output does), so frame ``i`` always shows the input at time ``start + i / fps``.
    """

    path: str
    width: int
    height: int
    fps: Fraction
    n_frames: Optional[int]
    duration: Optional[float]
    has_audio: bool
    codec: str
    stream: int  # index among the file's video streams (cover-art streams skipped)
    start: float = 0.0  # the file's start time (s): frame i is presented at start + i / fps
    audio_codecs: Tuple[str, ...] = ()


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_START_RE = re.compile(r"Duration:.*?, start: (-?\d+(?:\.\d+)?)")
_STREAM_RE = re.compile(r"^\s*Stream #\d+:\d+.*?: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_SIZE_RE = re.compile(r" (\d+)x(\d+)[, \[]")
_RATE_RE = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)


def exact_fps(value: float) -> Fraction:
    """ffmpeg prints 29.97 for 30000/1001; recover such NTSC rates, keep others as printed."""
    if value <= 0:
        return Fraction(0)
    ntsc = round(value * 1.001)
    if abs(value - round(value)) > 1e-6 and abs(value - ntsc / 1.001) < 0.006:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(value).limit_denominator(1001)


def last_error_line(text: str) -> str:
    """The most informative single line of an ffmpeg log (its own prefixes stripped)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    skip = ("Error opening input file", "Error opening input files", "At least one output file",
            "Consider increasing", "Terminating thread", "Task finished")
    useful = [ln for ln in lines if not ln.startswith(skip)]
    line = (useful or lines or [""])[-1]
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", line)[:200]


def check_readable_file(path: str, what: str = "input") -> None:
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path} — check the path")
    if os.path.isdir(path):
        raise UserError(f"{what} is a folder, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} is not readable (permission denied): {path} — fix its permissions")
    if os.path.getsize(path) == 0:
        raise UserError(f"{what} is empty (0 bytes): {path} — re-download or re-export it")


def _read_header(path: str) -> str:
    """ffmpeg's description of ``path`` (``ffmpeg -i``, no decoding); UserError naming the file if unreadable."""
    try:
        proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *stream_options(path), "-i", path],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=120)
    except subprocess.TimeoutExpired:
        raise UserError(f"no answer from {path} within 120 s — check the address and that it is live") from None
    text = proc.stderr.decode("utf-8", "replace")
    if is_stream_url(path) and ("Error opening input" in text or "Input #0" not in text):
        raise UserError(f"cannot open the stream {path} ({last_error_line(text)}) — check the address and that "
                        "the stream is live")
    if "Error opening input" in text or "Input #0" not in text:
        if "moov atom not found" in text:
            why = "its index is missing: the file is truncated (incomplete download/recording) or not a video"
        else:
            why = f"{last_error_line(text)}: it is not a video, or it is truncated or corrupt"
        raise UserError(f"cannot read {path} as a video ({why}) — re-download or re-export it")
    return text


def _first_video_stream(text: str) -> Optional[Dict[str, Any]]:
    """Codec, size, rate, rotation and index (among video streams, cover art counted) of the first real video
    stream in an ``ffmpeg -i`` description; None when there is none."""
    found: Optional[Dict[str, Any]] = None
    v_index = -1
    in_block = False
    for line in text.splitlines():
        m = _STREAM_RE.match(line)
        if m:
            kind, rest = m.groups()
            in_block = False
            if kind != "Video":
                continue
            v_index += 1
            if found is None and "(attached pic)" not in rest:  # cover art in audio files is not a video
                in_block = True
                size = _SIZE_RE.search(rest + " ")
                rates = {unit: float(v) * (1000 if k else 1) for v, k, unit in _RATE_RE.findall(rest)}
                found = {"codec": rest.split(" ", 1)[0].strip(","), "stream": v_index, "rotation": 0.0,
                         "size": (int(size.group(1)), int(size.group(2))) if size else (0, 0),
                         "fps": rates.get("fps") or rates.get("tbr") or 0.0}
            continue
        r = _ROTATION_RE.search(line) if in_block else None
        if r:
            found["rotation"] = float(r.group(1))  # type: ignore[index]
    return found


def audio_codecs(text: str) -> Tuple[str, ...]:
    """Codec names (ffmpeg's: ``aac``, ``mp3``, ``vorbis``, ``pcm_s16le`` ...) of the audio streams, in order."""
    return tuple(m.group(2).split(" ", 1)[0].strip(",") for m in map(_STREAM_RE.match, text.splitlines())
                 if m and m.group(1) == "Audio")


def probe_audio_codecs(path: str) -> Tuple[str, ...]:
    """The audio codecs of any media file ``path`` (a video, or an audio file such as a WAV)."""
    return audio_codecs(_read_header(path))


def probe_video(path: str) -> VideoInfo:
    """Read a video's header with ``ffmpeg -i`` (no decoding). Raises UserError naming the file."""
    if not is_stream_url(path):
        check_readable_file(path, "input video")
    text = _read_header(path)
    video = _first_video_stream(text)
    if video is None:
        raise UserError(f"no video frames in {path}: it has no video stream (audio-only or not a video) "
                        "— give a video file")
    width, height = video["size"]
    if width <= 0 or height <= 0:
        raise UserError(f"cannot read the frame size of {path} — the file is corrupt or has no frames; "
                        "re-export it")
    if int(round(abs(video["rotation"]))) % 180 == 90:
        width, height = height, width
    d = _DURATION_RE.search(text)
    duration = (int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3))) if d else None
    start = _START_RE.search(text)
    exact = exact_fps(video["fps"])
    n_frames = int(round(duration * float(exact))) if duration and exact > 0 and not is_stream_url(path) else None
    codecs = audio_codecs(text)
    return VideoInfo(path=path, width=width, height=height, fps=exact, n_frames=n_frames,
                     duration=duration, has_audio=bool(codecs), codec=video["codec"], stream=video["stream"],
                     start=float(start.group(1)) if start else 0.0, audio_codecs=codecs)


class StderrTail(threading.Thread):
    """Drain a process's stderr so it never blocks; keep only the last lines (bounded memory)."""

    def __init__(self, stream: Any, keep: int = 30) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self.lines: Deque[str] = collections.deque(maxlen=keep)
        self.start()

    def run(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.lines.append(line)

    def text(self) -> str:
        self.join(timeout=2.0)
        return "\n".join(self.lines)


# Ctrl-C in the terminal must reach only us: we stop the ffmpeg children ourselves (kill a decoder,
# finish or discard an encoder), instead of each dying mid-stream with its own exit status.
OWN_SESSION: Dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {}


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a child ffmpeg quickly and reap it (no zombies, no leaked pipes)."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(Exception):
            if f is not None:
                f.close()
