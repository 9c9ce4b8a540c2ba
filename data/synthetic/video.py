"""A synthetic video: the shapes moving, scaling, rotating and entering / leaving over a slowly panning
background, written through the project's H.264 writer (``utils.media.video_writer``), with its per-frame ground
truth as ``PATH.json``.

Layering: this is tool code (used by ``python -m data.synthetic --video`` and the benchmarks), the one module of
``data`` allowed to import ``utils.media``; the dataset modules do not.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import wave
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data.synthetic.backgrounds import add_noise, draw_clutter, make_background, make_noise_bank
from data.synthetic.scene import random_shape
from data.synthetic.shapes import ALL_SHAPES, SHAPE_CLASSES, Shape, render_shapes, shape_indices
from utils.errors import UserError
from utils.io import atomic_write
from utils.media.ffmpeg import VIDEO_EXTENSIONS
from utils.media.video_writer import VideoWriter, video_pix_fmt


@dataclass
class _Track:
    shape: Shape
    vx: float
    vy: float
    growth: float
    spin: float
    ident: int
    base: Tuple[float, float] = field(default=(0.0, 0.0))


def _spawn(rng: np.random.Generator, bg: np.ndarray, width: int, height: int, ident: int,
           entering: bool, classes: Sequence[int] = ALL_SHAPES) -> _Track:
    size = float(math.exp(rng.uniform(math.log(24), math.log(max(25.0, 0.5 * min(width, height))))))
    sh = random_shape(rng, bg, size, classes=classes)
    speed = float(rng.uniform(0.5, 4.0))
    if entering:  # start just outside one edge, heading inwards
        edge = int(rng.integers(4))
        r = max(sh.sx, sh.sy) / 2
        if edge == 0:
            sh.cx, sh.cy, a = -r, float(rng.uniform(0, height)), rng.uniform(-0.6, 0.6)
        elif edge == 1:
            sh.cx, sh.cy, a = width + r, float(rng.uniform(0, height)), np.pi + rng.uniform(-0.6, 0.6)
        elif edge == 2:
            sh.cx, sh.cy, a = float(rng.uniform(0, width)), -r, np.pi / 2 + rng.uniform(-0.6, 0.6)
        else:
            sh.cx, sh.cy, a = float(rng.uniform(0, width)), height + r, -np.pi / 2 + rng.uniform(-0.6, 0.6)
    else:
        a = rng.uniform(0, 2 * np.pi)
    return _Track(sh, speed * math.cos(a), speed * math.sin(a), float(rng.uniform(-0.006, 0.006)),
                  float(rng.uniform(-2.0, 2.0)), ident, (sh.sx, sh.sy))


def _tone_wav(path: str, seconds: float, rate: int = 44100) -> None:
    """A 16-bit mono sine tone whose pitch steps every second (440, 554, 659 Hz, ...)."""
    n = max(1, int(round(seconds * rate)))
    t = np.arange(n) / rate
    freq = np.array([440.0, 554.37, 659.25])[(t.astype(int)) % 3]
    phase = 2 * np.pi * np.cumsum(freq) / rate
    samples = (0.25 * 32767 * np.sin(phase)).astype("<i2")
    with wave.open(path, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes(samples.tobytes())


def _move(tracks: List[_Track], width: int, height: int) -> List[_Track]:
    """One frame of motion: move, scale (bouncing between 16 px and 70 % of the frame), spin; drop the tracks
    that left the frame."""
    alive = []
    limit = 0.7 * min(width, height)
    for tr in tracks:
        sh = tr.shape
        sh.cx += tr.vx
        sh.cy += tr.vy
        sh.angle += tr.spin
        f = 1.0 + tr.growth
        if 16 < sh.sx * f < limit and 16 < sh.sy * f < limit:
            sh.sx, sh.sy = sh.sx * f, sh.sy * f
        else:
            tr.growth = -tr.growth
        r = max(sh.sx, sh.sy)
        if -2 * r < sh.cx < width + 2 * r and -2 * r < sh.cy < height + 2 * r:
            alive.append(tr)
    return alive


def _check_video_args(path: str, num_frames: int, fps: float, width: int, height: int) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        raise UserError(f"unsupported video extension {ext or '(none)'!r} for {path} — use one of "
                        f"{', '.join(VIDEO_EXTENSIONS)}", code=2)
    if num_frames < 1:
        raise UserError(f"--frames must be at least 1, got {num_frames}", code=2)
    if width < 32 or height < 32:
        raise UserError(f"video size {width}x{height} is too small (sides >= 32)", code=2)
    if not fps > 0:
        raise UserError(f"--fps must be positive, got {fps}", code=2)
    return ext


def _render_frames(writer: VideoWriter, num_frames: int, fps: float, width: int, height: int, seed: int,
                   max_objects: int, classes: Sequence[int] = ALL_SHAPES) -> List[List[Dict[str, Any]]]:
    """Render the frames into ``writer``; return each frame's ground truth (``label``: index into ``classes``)."""
    rng = np.random.default_rng([int(seed), 0x7E0])
    bank = make_noise_bank(seed)
    pad = 64
    bg = make_background(rng, width + pad, height + pad, bank)
    draw_clutter(bg, rng, int(rng.integers(3, 12)), min(100.0, 0.3 * min(width, height)))
    pan = rng.uniform(-0.3, 0.3, 2)
    origin = np.array([pad / 2, pad / 2])
    tracks = [_spawn(rng, bg[:height, :width], width, height, i, entering=False, classes=classes)
              for i in range(int(rng.integers(2, min(4, max_objects) + 1)))]
    next_id = len(tracks)
    frames_gt: List[List[Dict[str, Any]]] = []
    for t in range(num_frames):
        o = np.clip(origin + pan * t, 0, pad).astype(int)
        frame = bg[o[1]:o[1] + height, o[0]:o[0] + width].copy()
        add_noise(frame, rng, bank, 0.15)
        anns = render_shapes(frame, [tr.shape for tr in tracks], rng)
        frames_gt.append([{"box": list(a.box), "label": classes.index(a.label), "name": a.name,
                           "difficult": a.difficult,
                           "track": tr.ident} for tr, a in zip(tracks, anns) if a is not None])
        writer.write(np.ascontiguousarray(frame))
        tracks = _move(tracks, width, height)
        if len(tracks) < max_objects and rng.random() < 1.5 / fps:
            tracks.append(_spawn(rng, bg[:height, :width], width, height, next_id, entering=True, classes=classes))
            next_id += 1
    return frames_gt


def generate_video(path: str, num_frames: int = 150, fps: float = 30.0, width: int = 640, height: int = 360,
                   seed: int = 0, audio: bool = False, max_objects: int = 6,
                   classes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Write a synthetic video to ``path`` (atomically) and its ground truth to ``path + '.json'``.

    Frames are RGB ``height x width``; H.264 in yuv420p for even sizes, yuv444p when a side is odd (4:2:0
    needs even sides). With ``audio`` an AAC sine tone of the video's length is muxed in. The JSON holds
    ``frames[t] = [{"box": [x0, y0, x1, y1], "label", "name", "difficult", "track"}, ...]`` with 0-based
    inclusive pixel boxes (the datasets' ``pull_anno`` convention); ``classes``: the shapes drawn, by name (default
    all five; ``label`` indexes ``class_names``). Returns a summary dict.
    """
    _check_video_args(path, num_frames, fps, width, height)
    indices = shape_indices(classes)
    gt_path = path + ".json"
    wav = None
    try:
        if audio:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd, wav = tempfile.mkstemp(suffix=".wav", dir=os.path.dirname(os.path.abspath(path)))
            os.close(fd)
            _tone_wav(wav, num_frames / fps)
        with VideoWriter(path, width, height, fps, crf=20, audio_from=wav, audio_codec="aac",
                         reproducible=True) as writer:
            frames_gt = _render_frames(writer, num_frames, fps, width, height, seed, max_objects, indices)
    finally:
        if wav is not None and os.path.exists(wav):
            os.remove(wav)
    summary = {"video": os.path.basename(path), "width": width, "height": height, "fps": float(fps),
               "num_frames": num_frames, "seed": int(seed), "audio": bool(audio),
               "pix_fmt": video_pix_fmt(width, height), "class_names": [SHAPE_CLASSES[k] for k in indices],
               "box_format": "x0, y0, x1, y1 in 0-based inclusive pixels", "frames": frames_gt}
    with atomic_write(gt_path) as tmp_json:
        with open(tmp_json, "w") as fh:
            json.dump(summary, fh, separators=(",", ":"))
    return {k: v for k, v in summary.items() if k != "frames"} | {
        "path": os.path.abspath(path), "ground_truth": os.path.abspath(gt_path),
        "num_objects": sum(len(f) for f in frames_gt)}
