"""Run an SSD over a video, an image, a folder of images or a webcam and write annotated output.

    python object_detection.py weights/ssd300_mAP_77.43_v2.pth videos/dog.mp4 -o videos/dog_detected.mp4

Decoding (ffmpeg), inference (batched, on the GPU when there is one) and drawing + encoding run
overlapped in three stages with bounded queues, so memory stays flat for any video length. The
input's fps, size (odd sizes included) and audio are kept. ``--json`` writes every frame's
detections (frame index, time, class, score, box in pixels).

The functions ``detect_video`` / ``detect_images`` take any predictor object with
``.predict(list of RGB uint8 [H, W, 3]) -> list of detections`` (``.boxes [n, 4]`` xyxy pixels,
``.scores [n]``, ``.labels [n]`` in 1..C-1) and ``.class_names``; ``main`` builds one from a
checkpoint with ``utils.inference.predictor.Predictor``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from utils.media.draw import draw_detections
from utils import cli
from utils.cli import Parser, add_inference_flags
from utils.errors import UserError, run_cli
from utils.io import atomic_write
from utils.media.video import (DEFAULT_CRF, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReader, VideoWriter,
                         WebcamReader, check_video_output, crf_from_quality, is_image_path, iter_images,
                         list_images, run_pipeline, write_image)

DEFAULT_OUTPUT = "output.mp4"


# --------------------------------------------------------------------------------------------
# Results: counts, JSON log, summary
# --------------------------------------------------------------------------------------------

def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor from a custom predictor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def select(dets: Any, threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes float32 [k, 4], scores float32 [k], labels int64 [k])`` with score >= threshold."""
    boxes = _numpy(dets.boxes).astype(np.float32).reshape(-1, 4)
    scores = _numpy(dets.scores).astype(np.float32).reshape(-1)
    labels = _numpy(dets.labels).astype(np.int64).reshape(-1)
    keep = scores >= threshold
    return boxes[keep], scores[keep], labels[keep]


def _name(label: int, class_names: Sequence[str]) -> str:
    return class_names[label - 1] if 1 <= label <= len(class_names) else f"class_{label}"


class DetectionLog:
    """Streams ``{"...meta", "frames": [{frame, time, detections: [...]}, ...]}`` to a JSON file.

    Written frame by frame (memory stays flat) into a temporary file that is renamed into place
    only when the run succeeds.
    """

    def __init__(self, path: str, meta: Dict[str, Any], class_names: Sequence[str]) -> None:
        self.path = path
        self.class_names = list(class_names)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_write(path, suffix=".json"))
        self._fh: IO[str] = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        head = json.dumps({**meta, "class_names": self.class_names})
        self._fh.write(head[:-1] + ', "frames": [')
        self._first = True

    def add(self, index: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
            **extra: Any) -> None:
        dets = [{"class": _name(int(l), self.class_names), "label": int(l), "score": round(float(s), 4),
                 "box": [round(float(v), 2) for v in b]} for b, s, l in zip(boxes, scores, labels)]
        entry = {"frame": index, **extra, "detections": dets}
        self._fh.write(("\n" if self._first else ",\n") + json.dumps(entry))
        self._first = False

    def __enter__(self) -> "DetectionLog":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._fh.write("\n]}\n")
        self._stack.__exit__(exc_type, exc, tb)


@dataclass
class Summary:
    frames: int = 0
    seconds: float = 0.0
    output: str = ""
    json_path: Optional[str] = None
    per_class: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def lines(self, threshold: float) -> List[str]:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.per_class.items(), key=lambda kv: (-kv[1], kv[0])))
        out = [f"frames: {self.frames} in {self.seconds:.1f} s ({rate:.1f} frames/s)",
               f"detections (score >= {threshold:g}): {sum(self.per_class.values())}"
               + (f" — {counts}" if counts else ""),
               f"output: {self.output}"]
        if self.json_path:
            out.append(f"detections json: {self.json_path}")
        out += [f"note: {n}" for n in self.notes]
        return out


def _progress(total: Optional[int], desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    # disable=None: shown on a terminal only, so logs and pipes get the summary and nothing else
    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, disable=None if enabled else True,
                file=sys.stderr)


# --------------------------------------------------------------------------------------------
# The two drivers (any predictor; no CLI parsing)
# --------------------------------------------------------------------------------------------

def detect_video(predictor: Any, source: Any, output: str, *, threshold: float = 0.6, batch_size: int = 8,
                 crf: int = DEFAULT_CRF, audio: bool = True, json_path: Optional[str] = None,
                 progress: bool = True) -> Summary:
    """Annotate every frame of ``source`` (a VideoReader or WebcamReader) into ``output``.

    Frames keep their order, size and the source's fps; the source's audio is stream-copied when
    ``audio`` and the source has any. Nothing appears under ``output`` / ``json_path`` unless
    the whole run succeeds.
    """
    check_video_output(output)
    class_names = list(predictor.class_names)
    width, height = source.size
    fps = source.info.fps if isinstance(source, VideoReader) else source.fps
    has_audio = isinstance(source, VideoReader) and source.info.has_audio
    total = source.info.n_frames if isinstance(source, VideoReader) else None
    if total is not None and getattr(source, "max_frames", None):
        total = min(total, source.max_frames)
    fps_f = float(fps) if fps > 0 else 25.0
    counts: collections.Counter = collections.Counter()
    index = [0]
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # entered first = committed last: the JSON only appears once the video is in place
        log = stack.enter_context(DetectionLog(json_path, {
            "input": getattr(source, "path", None), "output": output, "fps": fps_f,
            "width": width, "height": height, "threshold": threshold}, class_names)) if json_path else None
        writer = stack.enter_context(VideoWriter(output, width, height, fps, crf=crf,
                                                 audio_from=source.path if audio and has_audio else None))
        bar = stack.enter_context(_progress(total, os.path.basename(output), progress))

        def consume(frame: np.ndarray, dets: Any) -> None:
            boxes, scores, labels = select(dets, threshold)
            draw_detections(frame, boxes, labels, scores, class_names)
            writer.write(frame)
            if log is not None:
                log.add(index[0], boxes, scores, labels, time=round(index[0] / fps_f, 4))
            counts.update(_name(int(l), class_names) for l in labels)
            index[0] += 1
            bar.update(1)

        stop = source.stop if isinstance(source, WebcamReader) else None
        frames = run_pipeline(source, predictor.predict, consume, batch_size=batch_size, stop_on_interrupt=stop)
    summary = Summary(frames=frames, seconds=time.perf_counter() - start, output=output, json_path=json_path,
                      per_class=dict(counts), notes=list(writer.notes))
    if isinstance(source, VideoReader) and source.warnings:
        summary.notes.append(f"ffmpeg reported decoding errors in {source.path} ({source.warnings[-1]}); "
                             "some frames may show artefacts")
    return summary


def detect_images(predictor: Any, inputs: Sequence[str], outputs: Sequence[str], *, threshold: float = 0.6,
                  batch_size: int = 8, json_path: Optional[str] = None, progress: bool = True) -> Summary:
    """Annotate image files ``inputs[i]`` into ``outputs[i]`` (all in one folder).

    Results are staged in a temporary folder and moved into place only when every image
    succeeded, so a failure (e.g. an unreadable image) leaves no partial output.
    """
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError("inputs and outputs must be non-empty and of equal length")
    class_names = list(predictor.class_names)
    out_dir = os.path.dirname(os.path.abspath(outputs[0]))
    counts: collections.Counter = collections.Counter()
    index = [0]
    start = time.perf_counter()
    staging = tempfile.mkdtemp(prefix=".detect.", dir=cli.nearest_existing_folder(out_dir))
    try:
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(DetectionLog(json_path, {"input": os.path.dirname(inputs[0]) or ".",
                                                               "output": out_dir, "threshold": threshold},
                                                   class_names)) if json_path else None
            bar = stack.enter_context(_progress(len(inputs), "images", progress))

            def consume(image: np.ndarray, dets: Any) -> None:
                i = index[0]
                boxes, scores, labels = select(dets, threshold)
                draw_detections(image, boxes, labels, scores, class_names)
                write_image(os.path.join(staging, f"{i:08d}{os.path.splitext(outputs[i])[1]}"), image)
                if log is not None:
                    log.add(i, boxes, scores, labels, file=os.path.basename(inputs[i]),
                            width=int(image.shape[1]), height=int(image.shape[0]))
                counts.update(_name(int(l), class_names) for l in labels)
                index[0] += 1
                bar.update(1)

            frames = run_pipeline(iter_images(inputs), predictor.predict, consume, batch_size=batch_size)
            os.makedirs(out_dir, exist_ok=True)
            for i, out in enumerate(outputs):
                os.replace(os.path.join(staging, f"{i:08d}{os.path.splitext(out)[1]}"), out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shown = outputs[0] if len(outputs) == 1 else out_dir
    return Summary(frames=frames, seconds=time.perf_counter() - start, output=shown, json_path=json_path,
                   per_class=dict(counts))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser("object_detection.py", description="Detect objects in a video, image, folder of images or webcam with an SSD "
                            "and write the annotated result.")
    p.add_argument("model", metavar="MODEL", help="checkpoint (.pth/.pt) or exported .onnx model")
    p.add_argument("input", metavar="INPUT",
                   help="video file, image file, folder of images, or a webcam index (0, 1, ...)")
    p.add_argument("-o", "--output", default=None,
                   help=f"output video ({', '.join(VIDEO_EXTENSIONS)}; default {DEFAULT_OUTPUT}), image "
                        "(default <name>_detected.<ext> beside the input) or folder (default <folder>_detected)")
    p.add_argument("--threshold", type=float, default=0.6, help="minimum score to draw/report (default 0.6)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: from the checkpoint, "
                                                     "else VOC)")
    p.add_argument("--dataset", choices=("voc", "coco"), type=str.lower,
                   help="class set when the checkpoint carries none")
    p.add_argument("--num_classes", type=int, help="classes including background, when the file doesn't say")
    p.add_argument("--size", type=int, help="input size 300 or 512 (default: from the checkpoint)")
    p.add_argument("--batch_size", type=int, default=8, help="frames per inference batch (default 8)")
    add_inference_flags(p)
    p.add_argument("--top_k", type=int, default=200, help="at most this many detections per class (default 200)")
    p.add_argument("--no-audio", dest="audio", action="store_false", help="don't copy the input's audio")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--quality", type=float, help="video quality 0 (small) .. 10 (best); default ~5.5 (crf 23)")
    q.add_argument("--crf", type=int, help=f"x264 CRF 0 (lossless) .. 51 (smallest); default {DEFAULT_CRF}")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write every frame's detections to PATH")
    p.add_argument("--max_frames", type=int, help="stop after this many frames/images")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


@dataclass
class Job:
    kind: str  # "video" | "image" | "folder" | "webcam"
    inputs: List[str]
    outputs: List[str]
    webcam: Optional[int] = None


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_writable_folder(folder: str, what: str = "output folder") -> None:
    cli.check_writable_folder(folder, what, "choose another -o location")


def plan(args: argparse.Namespace) -> Job:
    """Resolve input kind and output paths and validate them; cheap, before any model is loaded."""
    inp = args.input
    out = args.output
    if not os.path.exists(inp) and inp.isdigit():
        out = out or DEFAULT_OUTPUT
        check_video_output(out)
        job = Job("webcam", [], [out], webcam=int(inp))
    elif os.path.isdir(inp):
        images = list_images(inp)
        if args.max_frames:
            images = images[:args.max_frames]
        out = out or (os.path.normpath(os.path.abspath(inp)) + "_detected")
        if os.path.splitext(out)[1].lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS or os.path.isfile(out):
            raise UserError(f"for a folder of images, -o must be a folder (got {out})", code=2)
        if _same_file(out, inp):
            raise UserError(f"output folder is the input folder: {out} — annotated images would overwrite the "
                            "originals; choose another -o", code=2)
        job = Job("folder", images, [os.path.join(out, os.path.basename(p)) for p in images])
    elif is_image_path(inp):
        if not os.path.exists(inp):
            raise UserError(f"input not found: {inp} — check the path")
        stem, ext = os.path.splitext(inp)
        out = out or f"{stem}_detected{ext}"
        if os.path.splitext(out)[1].lower() not in IMAGE_EXTENSIONS:
            raise UserError(f"cannot write an image to {out}: unsupported extension — use one of "
                            f"{', '.join(IMAGE_EXTENSIONS)}", code=2)
        job = Job("image", [inp], [out])
    else:
        if not os.path.exists(inp):
            raise UserError(f"input not found: {inp} — check the path (a video, an image, a folder of images "
                            "or a webcam index)")
        out = out or DEFAULT_OUTPUT
        check_video_output(out)
        job = Job("video", [inp], [out])
    if job.kind != "folder":
        if job.inputs and _same_file(job.outputs[0], job.inputs[0]):
            raise UserError(f"output is the input file: {job.outputs[0]} — choose another -o, the input would be "
                            "overwritten", code=2)
        if os.path.isdir(job.outputs[0]):
            raise UserError(f"output {job.outputs[0]} is a folder — give a file name", code=2)
    check_writable_folder(os.path.dirname(os.path.abspath(job.outputs[0])))
    if args.json_path:
        if any(_same_file(args.json_path, p) for p in job.inputs + job.outputs[:1]):
            raise UserError(f"--json {args.json_path} would overwrite the input or output — choose another path",
                            code=2)
        check_writable_folder(os.path.dirname(os.path.abspath(args.json_path)), "--json folder")
    return job


def check_flags(args: argparse.Namespace) -> int:
    """Validate numeric flags; return the CRF to encode with."""
    if not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold {args.threshold} must be between 0 and 1", code=2)
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size} must be at least 1", code=2)
    if args.top_k < 1:
        raise UserError(f"--top_k {args.top_k} must be at least 1", code=2)
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max_frames {args.max_frames} must be at least 1", code=2)
    if args.num_classes is not None and args.num_classes < 2:
        raise UserError(f"--num_classes {args.num_classes} must count background plus at least one class", code=2)
    if args.crf is not None:
        if not 0 <= args.crf <= 51:
            raise UserError(f"--crf {args.crf} is out of range; use 0 (lossless) .. 51 (smallest file)", code=2)
        return args.crf
    return crf_from_quality(args.quality) if args.quality is not None else DEFAULT_CRF


def read_class_names(path: str) -> List[str]:
    """Class names, one per line (blank lines and ``#`` comments skipped; background not listed)."""
    if not os.path.isfile(path):
        raise UserError(f"--classes file not found: {path} — give a text file with one class name per line")
    with open(path, encoding="utf-8") as fh:
        names = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise UserError(f"--classes file {path} lists no class names — one name per line")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"--classes file {path} lists {', '.join(dup)} more than once — names must be unique")
    return names


def dataset_class_names(dataset: str) -> List[str]:
    if dataset == "voc":
        from data.voc0712 import VOC_CLASSES
        return list(VOC_CLASSES)
    from data.coco import COCO_CLASSES
    return list(COCO_CLASSES)


def load_predictor(args: argparse.Namespace) -> Any:
    """Build the predictor from MODEL (checkpoint or .onnx) and the model flags."""
    model = args.model
    if not os.path.exists(model):  # before importing torch: this one should answer at once
        raise UserError(f"model file not found: {model} — check the path")
    from data.config import SUPPORTED_SIZES
    from utils.inference import open_predictor
    from utils.device import resolve_device

    if args.size is not None and args.size not in SUPPORTED_SIZES:
        raise UserError(f"--size {args.size} is not supported; use {' or '.join(map(str, SUPPORTED_SIZES))}", code=2)
    device = resolve_device(args.device)
    names = read_class_names(args.classes) if args.classes else (
        dataset_class_names(args.dataset) if args.dataset else None)
    num_classes = args.num_classes or (len(names) + 1 if names else None)
    if names is not None and num_classes != len(names) + 1:
        raise UserError(f"--num_classes {num_classes} counts background, so it needs {num_classes - 1} class names; "
                        f"{len(names)} were given", code=2)
    # the predictor drops what is below the drawing threshold early: NMS ranks by score, so this
    # changes nothing at or above it, and saves work
    kwargs = dict(device=device, amp=args.amp, compile=args.compile, num_classes=num_classes, size=args.size, top_k=args.top_k,
                  conf_thresh=args.threshold, class_names=names)
    try:
        return open_predictor(model, args.backend, **kwargs)
    except UserError:
        raise
    except (RuntimeError, ValueError, OSError, KeyError, EOFError) as exc:  # anything the loader didn't word
        raise UserError(f"cannot load model {model}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        " — check that it is an SSD checkpoint from this project or ssd.pytorch") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    crf = check_flags(args)
    job = plan(args)
    source: Any = None
    if job.kind == "video":
        source = VideoReader(job.inputs[0], max_frames=args.max_frames)  # probes: bad videos fail here
        source.peek()  # and zero-frame / undecodable ones here, before the model is loaded
    predictor = load_predictor(args)
    if job.kind == "webcam":
        source = WebcamReader(job.webcam, max_frames=args.max_frames)
    if job.kind in ("video", "webcam"):
        summary = detect_video(predictor, source, job.outputs[0], threshold=args.threshold,
                               batch_size=args.batch_size, crf=crf, audio=args.audio, json_path=args.json_path,
                               progress=args.progress)
    else:
        summary = detect_images(predictor, job.inputs, job.outputs, threshold=args.threshold,
                                batch_size=args.batch_size, json_path=args.json_path, progress=args.progress)
    print("\n".join(summary.lines(args.threshold)))
    return 0


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # `kill`/timeouts clean up like Ctrl-C: temporary files removed


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    run_cli(main)
