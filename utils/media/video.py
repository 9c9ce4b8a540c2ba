"""Streaming video I/O: probe, decode and encode with the ffmpeg binary from imageio-ffmpeg, plus
image-file, image-folder and webcam sources and a threaded decode -> infer -> encode pipeline.

Frames are always RGB ``uint8`` arrays of shape ``[H, W, 3]``, C-contiguous and writable.

Why our own ``subprocess`` wrappers rather than ``imageio_ffmpeg.read_frames`` / ``write_frames``:
we need ffmpeg's exit status and its stderr (to tell a truncated or corrupt file from a complete
one, and to print one clear line instead of ffmpeg's log), which those generators don't expose.
Only the binary (``imageio_ffmpeg.get_ffmpeg_exe()``) is taken from imageio-ffmpeg.

Memory stays flat for any video length: frames are read one at a time from a pipe, every queue
is bounded, and nothing is accumulated per frame.
"""
from __future__ import annotations

import collections
import contextlib
import os
import queue
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    TypeVar)

import numpy as np

from utils.errors import UserError
from utils.io import atomic_write

# Containers we can write H.264 into (and copy most audio codecs into).
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi")
# Image formats OpenCV reads and writes in every build.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CRF = 23  # x264's own default: visually near-transparent at reasonable sizes

T = TypeVar("T")
R = TypeVar("R")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg  # local import: cheap, but keeps this module import side-effect free

    return imageio_ffmpeg.get_ffmpeg_exe()


def crf_from_quality(quality: float) -> int:
    """Map imageio's ``quality`` scale (0 worst .. 10 best) onto x264's CRF (51 worst .. 0 best)."""
    if not 0 <= quality <= 10:
        raise UserError(f"--quality {quality} is out of range; use a value from 0 (smallest file) "
                        "to 10 (best quality)", code=2)
    return int(round((1.0 - quality / 10.0) * 51))


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoInfo:
    """What we know about a video before decoding it.

    ``width``/``height`` are those of the decoded frames (display rotation applied, as ffmpeg
    rotates on decode). ``fps`` is exact where ffmpeg's rounded figure is a known NTSC rate.
    ``n_frames`` is an estimate (duration x fps) or None when the container doesn't say.
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


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM_RE = re.compile(r"^\s*Stream #\d+:\d+.*?: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_SIZE_RE = re.compile(r" (\d+)x(\d+)[, \[]")
_RATE_RE = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)


def _exact_fps(value: float) -> Fraction:
    """ffmpeg prints 29.97 for 30000/1001; recover such NTSC rates, keep others as printed."""
    if value <= 0:
        return Fraction(0)
    ntsc = round(value * 1.001)
    if abs(value - round(value)) > 1e-6 and abs(value - ntsc / 1.001) < 0.006:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(value).limit_denominator(1001)


def _last_error_line(text: str) -> str:
    """The most informative single line of an ffmpeg log (its own prefixes stripped)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    skip = ("Error opening input file", "Error opening input files", "At least one output file",
            "Consider increasing", "Terminating thread", "Task finished")
    useful = [ln for ln in lines if not ln.startswith(skip)]
    line = (useful or lines or [""])[-1]
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", line)[:200]


def _check_readable_file(path: str, what: str = "input") -> None:
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path} — check the path")
    if os.path.isdir(path):
        raise UserError(f"{what} is a folder, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} is not readable (permission denied): {path} — fix its permissions")
    if os.path.getsize(path) == 0:
        raise UserError(f"{what} is empty (0 bytes): {path} — re-download or re-export it")


def probe_video(path: str) -> VideoInfo:
    """Read a video's header with ``ffmpeg -i`` (no decoding). Raises UserError naming the file."""
    _check_readable_file(path, "input video")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=120)
    text = proc.stderr.decode("utf-8", "replace")
    if "Error opening input" in text or "Input #0" not in text:
        if "moov atom not found" in text:
            why = "its index is missing: the file is truncated (incomplete download/recording) or not a video"
        else:
            why = f"{_last_error_line(text)}: it is not a video, or it is truncated or corrupt"
        raise UserError(f"cannot read {path} as a video ({why}) — re-download or re-export it")
    width = height = 0
    fps = 0.0
    codec = ""
    v_index = -1
    found = False
    has_audio = False
    in_video_block = False
    rotation = 0.0
    for line in text.splitlines():
        m = _STREAM_RE.match(line)
        if m:
            kind, rest = m.groups()
            in_video_block = False
            if kind == "Audio":
                has_audio = True
            elif kind == "Video":
                if "(attached pic)" in rest:  # cover art in audio files is not a video
                    v_index += 1
                    continue
                v_index += 1
                if not found:
                    found = True
                    in_video_block = True
                    codec = rest.split(" ", 1)[0].strip(",")
                    size = _SIZE_RE.search(rest + " ")
                    if size:
                        width, height = int(size.group(1)), int(size.group(2))
                    rates = {unit: float(v) * (1000 if k else 1) for v, k, unit in _RATE_RE.findall(rest)}
                    fps = rates.get("fps") or rates.get("tbr") or 0.0
                    stream = v_index
            continue
        if in_video_block:
            r = _ROTATION_RE.search(line)
            if r:
                rotation = float(r.group(1))
    if not found:
        raise UserError(f"no video frames in {path}: it has no video stream (audio-only or not a video) "
                        "— give a video file")
    if width <= 0 or height <= 0:
        raise UserError(f"cannot read the frame size of {path} — the file is corrupt or has no frames; "
                        "re-export it")
    if int(round(abs(rotation))) % 180 == 90:
        width, height = height, width
    d = _DURATION_RE.search(text)
    duration = (int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3))) if d else None
    exact = _exact_fps(fps)
    n_frames = int(round(duration * float(exact))) if duration and exact > 0 else None
    return VideoInfo(path=path, width=width, height=height, fps=exact, n_frames=n_frames,
                     duration=duration, has_audio=has_audio, codec=codec, stream=stream)


# --------------------------------------------------------------------------------------------
# ffmpeg subprocess with a drained stderr
# --------------------------------------------------------------------------------------------

class _Stderr(threading.Thread):
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
_OWN_SESSION: Dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {}


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a child ffmpeg quickly and reap it (no zombies, no leaked pipes)."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(Exception):
            if f is not None:
                f.close()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

class VideoReader:
    """Iterate the frames of a video file as RGB ``uint8 [H, W, 3]`` arrays, streaming from ffmpeg.

    Raises UserError (naming the file) for a missing / empty / unreadable / not-a-video input
    (at construction), and while iterating for a video that yields no frames or that ends early
    with decoding errors (truncated or corrupt). ``warnings`` collects ffmpeg's error lines when
    the video decoded completely despite them (e.g. a few damaged packets).
    """

    def __init__(self, path: str, max_frames: Optional[int] = None) -> None:
        self.info = probe_video(path)
        self.path = path
        self.max_frames = max_frames
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
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", self.path,
               "-map", f"0:v:{self.info.stream}", "-an", "-sn", "-dn"]
        if self.max_frames is not None:
            cmd += ["-frames:v", str(int(self.max_frames))]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0, **_OWN_SESSION)
        self._proc = proc
        log = _Stderr(proc.stderr)
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
                if got == 0:
                    break
                if got < nbytes:  # ffmpeg died mid-frame
                    proc.wait()
                    raise self._corrupt(log.text())
                self.frames_read += 1
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
            rc = proc.wait()
            self._check_end(rc, log.text())
        finally:
            _stop(proc)  # kills it if we stop early (max_frames, failure); else just reaps it
            self._proc = None

    def _check_end(self, rc: int, log: str) -> None:
        if self.frames_read == 0:
            raise UserError(f"no video frames could be decoded from {self.path} — the video has zero "
                            "frames or is corrupt; check the file")
        expected = self.info.n_frames
        if self.max_frames is not None and expected is not None:
            expected = min(expected, self.max_frames)
        # A complete file decodes to (almost) its announced length; tolerate rounding of the
        # duration and a few undecodable packets, not a missing tail.
        short = expected is not None and self.frames_read < expected * 0.98 - 1
        if rc != 0 or (short and log.strip()):
            raise self._corrupt(log)
        if log.strip():
            self.warnings.append(_last_error_line(log))

    def _corrupt(self, log: str) -> UserError:
        total = f" of ~{self.info.n_frames}" if self.info.n_frames else ""
        reason = f" ({_last_error_line(log)})" if log.strip() else ""
        return UserError(f"video is truncated or corrupt: {self.path} — decoding failed after "
                         f"{self.frames_read}{total} frames{reason}; re-download or re-encode it")

    def close(self) -> None:
        """Stop decoding (kills ffmpeg); safe to call at any time."""
        if self._frames is not None:
            with contextlib.suppress(Exception):
                self._frames.close()
            self._frames = None
        if self._proc is not None:
            _stop(self._proc)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

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
    """

    def __init__(self, path: str, width: int, height: int, fps: Fraction | float,
                 crf: int = DEFAULT_CRF, audio_from: Optional[str] = None,
                 preset: str = "veryfast") -> None:
        check_video_output(path)
        if not 0 <= crf <= 51:
            raise UserError(f"--crf {crf} is out of range; use 0 (lossless) .. 51 (smallest)", code=2)
        fps = Fraction(fps).limit_denominator(100000) if not isinstance(fps, Fraction) else fps
        if fps <= 0:
            fps = Fraction(25)  # container didn't say (e.g. some raw streams); ffmpeg's own default
        self.path = path
        self.width, self.height, self.fps = int(width), int(height), fps
        self.audio_from = audio_from
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
                self._stack.callback(_remove_quietly, self._video_tmp)
            else:
                self._video_tmp = self._final_tmp
            cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
                   "-r", f"{fps.numerator}/{fps.denominator}", "-i", "-", "-an",
                   "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)),
                   "-pix_fmt", video_pix_fmt(self.width, self.height)]
            if ext in (".mp4", ".mov"):
                cmd += ["-movflags", "+faststart"]
            cmd.append(self._video_tmp)
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, **_OWN_SESSION)
        except BaseException as exc:
            # an exception passed in makes atomic_write delete its temp instead of renaming it
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._log = _Stderr(self._proc.stderr)

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
                            f"({_last_error_line(self._log.text()) or exc}) — check free disk space "
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
                raise UserError(f"could not write video {self.path} ({_last_error_line(self._log.text())})"
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
        _stop(self._proc)
        exc = RuntimeError("aborted")
        self._stack.__exit__(type(exc), exc, None)

    def _mux_audio(self) -> None:
        assert self.audio_from is not None
        base = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error",
                "-i", self._video_tmp, "-i", self.audio_from,
                "-map", "0:v:0", "-map", "1:a?", "-c:v", "copy", "-shortest"]
        tail = ["-movflags", "+faststart"] if self.path.lower().endswith((".mp4", ".mov")) else []
        for audio in (["-c:a", "copy"], ["-c:a", "aac"]):  # copy; AAC only if the container refuses it
            proc = subprocess.run(base + audio + tail + [self._final_tmp], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if proc.returncode == 0:
                if audio[1] != "copy":
                    self.notes.append(f"the input's audio codec can't go into "
                                      f"{os.path.splitext(self.path)[1]}; it was re-encoded to AAC")
                return
        self.notes.append("the audio could not be copied "
                          f"({_last_error_line(proc.stderr.decode('utf-8', 'replace'))}); "
                          "the output has no sound")
        os.replace(self._video_tmp, self._final_tmp)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


# --------------------------------------------------------------------------------------------
# Images, folders, webcam
# --------------------------------------------------------------------------------------------

def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str) -> np.ndarray:
    """Read an image file as RGB ``uint8 [H, W, 3]``; UserError naming the file if it can't."""
    import cv2

    _check_readable_file(path, "image")
    data = np.fromfile(path, dtype=np.uint8)  # imdecode: no surprise with non-ASCII paths
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"cannot read image {path}: not an image or corrupt — re-export it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_image(path: str, image: np.ndarray) -> None:
    """Write an RGB image atomically (format from the extension)."""
    import cv2

    ext = os.path.splitext(path)[1].lower()
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"cannot encode an image as {ext}: {path}")
    with atomic_write(path, suffix=ext) as tmp:
        data.tofile(tmp)


def list_images(folder: str) -> List[str]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    if not os.path.isdir(folder):
        raise UserError(f"input folder not found: {folder} — check the path")
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and is_image_path(n)
                   and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise UserError(f"no images in folder {folder} — expected files ending in "
                        f"{', '.join(IMAGE_EXTENSIONS)}")
    return [os.path.join(folder, n) for n in names]


def iter_images(paths: Sequence[str]) -> Iterator[np.ndarray]:
    for p in paths:
        yield read_image(p)


class WebcamReader:
    """Frames from a camera (``cv2.VideoCapture(index)``) as RGB arrays until ``stop()`` or
    ``max_frames``. ``fps`` is the driver's figure (30 when it reports none)."""

    def __init__(self, index: int, max_frames: Optional[int] = None) -> None:
        import cv2

        self._cap = cv2.VideoCapture(int(index))
        if not self._cap.isOpened():
            raise UserError(f"cannot open webcam {index} — check that the camera is connected and free")
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise UserError(f"webcam {index} delivered no frame — check the camera")
        self._first: Optional[np.ndarray] = cv2.cvtColor(first, cv2.COLOR_BGR2RGB)
        fps = self._cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.fps = _exact_fps(fps) if 1 <= fps <= 240 else Fraction(30)
        self.height, self.width = self._first.shape[:2]
        self.max_frames = max_frames
        self._stopped = threading.Event()

    @property
    def size(self) -> Tuple[int, int]:
        return self.width, self.height

    def stop(self) -> None:
        self._stopped.set()

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        n = 0
        try:
            while not self._stopped.is_set() and (self.max_frames is None or n < self.max_frames):
                if self._first is not None:
                    frame, self._first = self._first, None
                else:
                    ok, bgr = self._cap.read()
                    if not ok or bgr is None:
                        break
                    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                n += 1
                yield frame
        finally:
            self._cap.release()


# --------------------------------------------------------------------------------------------
# Threaded pipeline
# --------------------------------------------------------------------------------------------

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: "queue.Queue[Any]", item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up when the pipeline is stopping (so no thread hangs on a full queue)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_pipeline(frames: Iterable[T], infer: Callable[[List[T]], Sequence[R]],
                 consume: Callable[[T, R], None], batch_size: int = 8, depth: int = 2,
                 stop_on_interrupt: Optional[Callable[[], None]] = None) -> int:
    """Decode -> infer -> consume with the three stages overlapped; returns the frame count.

    * a reader thread iterates ``frames`` (e.g. a VideoReader: ffmpeg decodes in its own process)
      and groups them into batches of ``batch_size``;
    * the calling thread runs ``infer(batch) -> results`` (one result per frame), so CUDA/torch
      state stays on the caller's thread;
    * a writer thread calls ``consume(frame, result)`` in frame order (drawing, encoding, JSON).

    Queues hold at most ``depth`` batches each, so memory is bounded by about
    ``(2 * depth + 3) * batch_size`` frames whatever the video length. An exception in any stage
    stops the other two and is re-raised here. ``stop_on_interrupt`` (webcam): on Ctrl-C call it
    (to stop the source) and finish the frames already read instead of raising.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    stop = threading.Event()
    q_in: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    q_out: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    consumer_error: List[BaseException] = []
    count = [0]

    def read() -> None:
        batch: List[T] = []
        it = iter(frames)
        try:
            for frame in it:
                if stop.is_set():
                    return
                batch.append(frame)
                if len(batch) == batch_size:
                    if not _put(q_in, batch, stop):
                        return
                    batch = []
            if batch:
                _put(q_in, batch, stop)
            _put(q_in, _END, stop)
        except BaseException as exc:  # handed to the main thread
            _put(q_in, _Failure(exc), stop)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def write() -> None:
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    return
                batch, results = item
                for frame, result in zip(batch, results):
                    consume(frame, result)
                    count[0] += 1
        except BaseException as exc:
            consumer_error.append(exc)
            stop.set()

    reader = threading.Thread(target=read, name="video-decode", daemon=True)
    writer = threading.Thread(target=write, name="video-encode", daemon=True)
    reader.start()
    writer.start()
    try:
        while True:
            try:
                try:
                    item = q_in.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():  # the writer failed
                        break
                    continue
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                results = infer(item)
                if len(results) != len(item):
                    raise RuntimeError(f"infer returned {len(results)} results for {len(item)} frames")
                if not _put(q_out, (item, results), stop):
                    break
            except KeyboardInterrupt:
                if stop_on_interrupt is None:
                    raise
                stop_on_interrupt()  # the source ends; frames already read are still written
                stop_on_interrupt = None  # a second Ctrl-C aborts
    except BaseException:
        stop.set()
        raise
    finally:
        # let the writer drain what it has (normal end) or stop at once (failure)
        while writer.is_alive():
            try:
                q_out.put(_END, timeout=0.1)
                break
            except queue.Full:
                if stop.is_set():
                    with contextlib.suppress(queue.Empty):
                        q_out.get_nowait()
        writer.join()
        stop.set()
        with contextlib.suppress(queue.Empty):  # unblock a reader waiting on a full queue
            while True:
                q_in.get_nowait()
        reader.join(timeout=10)
    if consumer_error:
        raise consumer_error[0]
    return count[0]
