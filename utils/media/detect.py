"""The two detection drivers: annotate a video stream or a list of image files with any predictor.

A predictor is any object with ``.predict(list of RGB uint8 [H, W, 3]) -> list of detections`` (``.boxes [n, 4]``
xyxy pixels, ``.scores [n]``, ``.labels [n]`` in 1..C-1) and ``.class_names`` (no background), e.g.
``utils.inference.Predictor``. Decoding, inference and drawing + encoding overlap (``utils.media.pipeline``).
"""
from __future__ import annotations

import collections
import contextlib
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from utils.io import nearest_existing_folder
from utils.media.draw import draw_detections
from utils.media.images import iter_images, write_image
from utils.media.pipeline import run_pipeline
from utils.media.results import DetectionLog, Summary, class_name, select
from utils.media.video_reader import VideoReader
from utils.media.video_writer import DEFAULT_CRF, SoundNotWritten, VideoWriter, check_video_output
from utils.media.webcam import WebcamReader


def _progress(total: Optional[int], desc: str, enabled: bool) -> Any:
    # disable=None: shown on a terminal only, so logs and pipes get the summary and nothing else
    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, disable=None if enabled else True,
                file=sys.stderr)


class _Annotator:
    """Per frame: keep the detections asked for, draw them on the frame, count them, advance the progress bar."""

    def __init__(self, class_names: Sequence[str], threshold: float, only: Optional[Sequence[int]], bar: Any) -> None:
        self.class_names, self.threshold, self.only, self.bar = list(class_names), threshold, only, bar
        self.counts: collections.Counter = collections.Counter()
        self.index = 0  # of the frame being annotated; advanced by done()

    def __call__(self, frame: np.ndarray, dets: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, labels = select(dets, self.threshold, self.only)
        draw_detections(frame, boxes, labels, scores, self.class_names)
        self.counts.update(class_name(int(l), self.class_names) for l in labels)
        return boxes, scores, labels

    def done(self) -> None:
        self.index += 1
        self.bar.update(1)


def detect_video(predictor: Any, source: Any, output: str, *, threshold: float = 0.6, batch_size: int = 8,
                 crf: int = DEFAULT_CRF, audio: bool = True, json_path: Optional[str] = None,
                 progress: bool = True, only: Optional[Sequence[int]] = None,
                 show: Optional[Callable[[np.ndarray], None]] = None) -> Summary:
    """Annotate every frame of ``source`` (a VideoReader or WebcamReader) into ``output``.

    Frames keep their order, size and the source's fps, one output frame per decoded frame; the source's audio
    is added whole (trimmed only when ``max_frames`` / ``max_seconds`` ended the source early) when ``audio`` and
    the source has any. ``only``: model labels (1..C-1) to keep, None for all. ``show(frame)`` is called with every
    annotated frame (a preview window), on the pipeline's writer thread. Nothing appears under ``output`` /
    ``json_path`` unless the whole run succeeds, except that a disk filling up while the sound is added leaves the
    silent video (and the JSON) in place and raises ``SoundNotWritten``. A live source (stream, webcam) is ended
    cleanly by Ctrl-C.
    """
    check_video_output(output)
    is_file = isinstance(source, VideoReader)
    fps = source.info.fps if is_file else source.fps
    fps_f = float(fps) if fps > 0 else 25.0
    start_s = source.info.start if is_file else 0.0
    sound_error: Optional[SoundNotWritten] = None
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # entered first = committed last: the JSON only appears once the video is in place
        log = stack.enter_context(DetectionLog(json_path, {
            "input": getattr(source, "path", None), "output": output, "fps": fps_f, "width": source.size[0],
            "height": source.size[1], "threshold": threshold}, predictor.class_names)) if json_path else None
        writer = stack.enter_context(VideoWriter(output, *source.size, fps, crf=crf,
                                                 audio_from=_sound_source(source, audio)))
        annotate = _Annotator(predictor.class_names, threshold, only,
                              stack.enter_context(_progress(_expected_frames(source), os.path.basename(output),
                                                            progress)))

        def consume(frame: np.ndarray, dets: Any) -> None:
            boxes, scores, labels = annotate(frame, dets)
            writer.write(frame)
            if show is not None:
                show(frame)
            if log is not None:  # time: in the output; pts: when the frame is shown in the input
                i = annotate.index
                log.add(i, boxes, scores, labels, time=round(i / fps_f, 4), pts=round(start_s + i / fps_f, 4))
            annotate.done()

        live = isinstance(source, WebcamReader) or (is_file and source.is_stream)
        frames = run_pipeline(source, predictor.predict, consume, batch_size=batch_size,
                              stop_on_interrupt=source.stop if live else None)
        if is_file and _cut_short(source, frames, fps_f):
            writer.audio_until = frames / fps_f  # the video was cut short on purpose: so is its sound
        try:
            writer.close()
        except SoundNotWritten as exc:  # the silent video is in place: let the JSON be written too
            sound_error = exc
    if sound_error is not None:
        raise SoundNotWritten(output, "the video was kept without sound" + (
            f", and the detections in {json_path}" if json_path else "")) from None
    return Summary(frames=frames, seconds=time.perf_counter() - start, output=output, json_path=json_path,
                   per_class=dict(annotate.counts), notes=list(writer.notes) + _source_notes(source, audio))


def _sound_source(source: Any, audio: bool) -> Optional[str]:
    """The file whose sound goes into the output, if any. A live stream can't be read a second time: its sound
    would have to be recorded while decoding, which is not done."""
    if audio and isinstance(source, VideoReader) and source.info.has_audio and not source.is_stream:
        return source.path
    return None


def _expected_frames(source: Any) -> Optional[int]:
    total = source.info.n_frames if isinstance(source, VideoReader) else None
    if total is not None and getattr(source, "max_frames", None):
        total = min(total, source.max_frames)
    return total


def _source_notes(source: Any, audio: bool) -> List[str]:
    if not isinstance(source, VideoReader):
        return []
    notes = []
    if source.is_stream and audio and source.info.has_audio:
        notes.append("the stream's sound is not recorded (only its frames)")
    if source.warnings:
        notes.append(f"ffmpeg reported decoding errors in {source.path} ({source.warnings[-1]}); "
                     "some frames may show artefacts")
    return notes


def _cut_short(source: VideoReader, frames: int, fps: float) -> bool:
    """Whether ``max_frames`` / ``max_seconds`` ended the video before its end."""
    by_count = source.max_frames is not None and frames >= source.max_frames
    by_time = source.max_seconds is not None and frames >= source.max_seconds * fps - 1
    return by_count or by_time


def detect_images(predictor: Any, inputs: Sequence[str], outputs: Sequence[str], *, threshold: float = 0.6,
                  batch_size: int = 8, json_path: Optional[str] = None, progress: bool = True,
                  only: Optional[Sequence[int]] = None) -> Summary:
    """Annotate image files ``inputs[i]`` into ``outputs[i]`` (all in one folder); ``only``: labels to keep.

    Results are staged in a temporary folder and moved into place only when every image
    succeeded, so a failure (e.g. an unreadable image) leaves no partial output.
    """
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError("inputs and outputs must be non-empty and of equal length")
    out_dir = os.path.dirname(os.path.abspath(outputs[0]))
    start = time.perf_counter()
    staging = tempfile.mkdtemp(prefix=".detect.", dir=nearest_existing_folder(out_dir))
    try:
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(DetectionLog(json_path, {"input": os.path.dirname(inputs[0]) or ".",
                                                               "output": out_dir, "threshold": threshold},
                                                   predictor.class_names)) if json_path else None
            annotate = _Annotator(predictor.class_names, threshold, only,
                                  stack.enter_context(_progress(len(inputs), "images", progress)))

            def consume(image: np.ndarray, dets: Any) -> None:
                i = annotate.index
                boxes, scores, labels = annotate(image, dets)
                write_image(os.path.join(staging, f"{i:08d}{os.path.splitext(outputs[i])[1]}"), image)
                if log is not None:
                    log.add(i, boxes, scores, labels, file=os.path.basename(inputs[i]),
                            width=int(image.shape[1]), height=int(image.shape[0]))
                annotate.done()

            frames = run_pipeline(iter_images(inputs), predictor.predict, consume, batch_size=batch_size)
            os.makedirs(out_dir, exist_ok=True)
            for i, out in enumerate(outputs):
                os.replace(os.path.join(staging, f"{i:08d}{os.path.splitext(out)[1]}"), out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shown = outputs[0] if len(outputs) == 1 else out_dir
    return Summary(frames=frames, seconds=time.perf_counter() - start, output=shown, json_path=json_path,
                   per_class=dict(annotate.counts))
