"""Helpers for the video tests: encode test videos with the ffmpeg binary directly (independent of VideoWriter)."""
from __future__ import annotations

import re
import subprocess
from fractions import Fraction
from types import SimpleNamespace

import numpy as np

from utils.media.ffmpeg import ffmpeg_exe
from utils.media.video_reader import VideoReader
from utils.media.video_writer import video_pix_fmt


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error", *args], check=True)


def make_video(path, frames, fps="24", audio=None, extra=()):
    """Encode RGB frames with the ffmpeg binary directly (independent of VideoWriter).

    ``audio``: None, or an ffmpeg audio codec ("aac", "libmp3lame") for a 1 kHz sine track.
    """
    frames = np.asarray(frames, dtype=np.uint8)
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", fps, "-i", "-"]
    if audio:
        seconds = float(n / Fraction(fps))
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=1000:sample_rate=22050:duration={seconds:.3f}", "-c:a", audio]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "0", "-pix_fmt", video_pix_fmt(w, h), *extra, str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return str(path)


def ramp_frames(n, h, w):
    """Frame i is uniformly grey at level 20 + 8 i: the frame's index can be read off any pixel."""
    return np.stack([np.full((h, w, 3), 20 + 8 * i, np.uint8) for i in range(n)])


def decode_all(path):
    return np.stack(list(VideoReader(path)))


def audio_codec(path):
    text = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True).stderr.decode()
    lines = [ln for ln in text.splitlines() if "Audio:" in ln]
    return lines[0].split("Audio:")[1].split()[0].strip(",") if lines else None


def truncated_video(tmp_path, faststart):
    """A video cut in half: without faststart the index (moov) is lost; with it the data is."""
    full = make_video(tmp_path / f"full{int(faststart)}.mp4", np.random.default_rng(0).integers(
        0, 255, (24, 48, 64, 3), dtype=np.uint8), extra=("-movflags", "+faststart") if faststart else ())
    data = open(full, "rb").read()
    cut = tmp_path / f"cut{int(faststart)}.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return str(cut)


class NoDetections:
    class_names = ["thing"]

    def predict(self, images):
        return [SimpleNamespace(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                                labels=np.zeros(0, np.int64)) for _ in images]


def _null_decode(path, stream):
    """ffmpeg's log after decoding one stream of ``path`` to nothing, timestamps passed through as they are."""
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", stream,
                           "-fps_mode", "passthrough", "-f", "null", "-"], capture_output=True, text=True).stderr


def count_frames(path):
    return int(re.findall(r"frame=\s*(\d+)", _null_decode(path, "0:v:0"))[-1])


def audio_end(path):
    """Seconds at which the first audio stream ends (its last decoded timestamp)."""
    h, m, s = re.findall(r"time=(\d+):(\d+):([\d.]+)", _null_decode(path, "0:a:0"))[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def make_clip(path, seconds=2, fps=25, audio=None, audio_seconds=None, delay=0.0, codec="aac", extra=()):
    """A 64x48 testsrc2 clip; ``audio``: None, or a sine track of ``audio_seconds`` (None: endless, cut by
    ``-shortest`` as a camera or an editor would) starting ``delay`` s late, encoded with ``codec``."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size=64x48:rate={fps}:duration={seconds}"]
    if audio:
        length = f":duration={audio_seconds}" if audio_seconds else ""
        args += ["-itsoffset", str(delay)] if delay else []
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100{length}", "-c:a", codec]
        args += [] if audio_seconds else ["-shortest"]
    ffmpeg(*args, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra, str(path))
    return str(path)
