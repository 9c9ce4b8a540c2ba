"""Run an SSD over a video, an image, a folder of images or a webcam and write annotated output.

    python object_detection.py weights/ssd300_mAP_77.43_v2.pth videos/dog.mp4 -o videos/dog_detected.mp4

Decoding (ffmpeg), inference (batched, on the GPU when there is one) and drawing + encoding run
overlapped in three stages with bounded queues, so memory stays flat for any video length. The
input's fps, size (odd sizes included) and audio are kept. ``--json`` writes every frame's
detections (frame index, time, class, score, box in pixels).

This script parses flags, checks inputs and outputs, opens the model (``utils.inference.open_predictor``) and
calls the drivers in ``utils.media.detect`` (``detect_video`` / ``detect_images``), which take any predictor.
"""
from __future__ import annotations

import argparse
import os
import signal
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from data.coco import COCO_CLASSES
from data.config import SUPPORTED_SIZES
from data.voc0712 import VOC_CLASSES
from utils import cli
from utils.cli import Parser, add_inference_flags
from utils.device import resolve_device
from utils.errors import UserError, run_cli
from utils.inference import open_predictor
from utils.labels import read_class_names
from utils.media.detect import detect_images, detect_video
from utils.media.ffmpeg import VIDEO_EXTENSIONS, is_stream_url
from utils.media.images import IMAGE_EXTENSIONS, is_image_path, list_images
from utils.media.preview import Preview, check_can_show
from utils.media.video_reader import VideoReader
from utils.media.video_writer import DEFAULT_CRF, check_video_output, crf_from_quality
from utils.media.webcam import WebcamReader
from weights.hub import resolve_model_path

__all__ = ["build_parser", "detect_images", "detect_video", "main", "plan"]

DEFAULT_OUTPUT = "output.mp4"


def build_parser() -> argparse.ArgumentParser:
    p = Parser("object_detection.py", description="Detect objects in a video, image, folder of images or webcam "
                                                  "with an SSD and write the annotated result.")
    p.add_argument("model", metavar="MODEL", help="checkpoint (.pth/.pt), exported .onnx / TorchScript model, or a pretrained model name (python -m weights list)")
    p.add_argument("input", metavar="INPUT",
                   help="video file, image file, folder of images, a webcam index (0, 1, ...) or a live stream "
                        "(rtsp://, rtmp://, http(s)://, udp://; end it with --max_frames, --max_seconds or Ctrl-C)")
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
    p.add_argument("--max_seconds", type=float, help="stop after this many seconds of video (files, streams)")
    p.add_argument("--only", metavar="NAMES", help="keep only these classes (comma-separated, e.g. person,car) in "
                                                   "the drawing, the JSON and the counts")
    p.add_argument("--show", action="store_true", help="show the annotated frames in a window as they are written "
                                                       "(video, stream, webcam; needs OpenCV with a GUI: "
                                                       "pip install opencv-python)")
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
    if is_stream_url(inp):
        out = out or DEFAULT_OUTPUT
        check_video_output(out)
        job = Job("video", [inp], [out])
    elif not os.path.exists(inp) and inp.isdigit():
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
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise UserError(f"--max_seconds {args.max_seconds} must be positive", code=2)
    if args.only is not None and not [n for n in args.only.split(",") if n.strip()]:
        raise UserError("--only lists no class names — give e.g. --only person,car", code=2)
    if args.show:
        check_can_show()
    if args.num_classes is not None and args.num_classes < 2:
        raise UserError(f"--num_classes {args.num_classes} must count background plus at least one class", code=2)
    if args.crf is not None:
        if not 0 <= args.crf <= 51:
            raise UserError(f"--crf {args.crf} is out of range; use 0 (lossless) .. 51 (smallest file)", code=2)
        return args.crf
    return crf_from_quality(args.quality) if args.quality is not None else DEFAULT_CRF


def dataset_class_names(dataset: str) -> List[str]:
    return list(VOC_CLASSES if dataset == "voc" else COCO_CLASSES)


def class_names_from_flags(args: argparse.Namespace) -> Optional[List[str]]:
    """``--classes`` / ``--dataset`` names (no background), checked against ``--num_classes``; None: the file's."""
    names = read_class_names(args.classes, what="--classes file", code=2) if args.classes else (
        dataset_class_names(args.dataset) if args.dataset else None)
    if names is not None and args.num_classes is not None and args.num_classes != len(names) + 1:
        raise UserError(f"--num_classes {args.num_classes} counts background, so it needs {args.num_classes - 1} "
                        f"class names; {len(names)} were given", code=2)
    return names


def load_predictor(args: argparse.Namespace) -> Any:
    """Open MODEL (checkpoint, .onnx or TorchScript) with the model flags."""
    model = resolve_model_path(args.model)  # a registry name (ssd300-coco, ...) -> the cached file; a path wins
    if not os.path.exists(model):
        raise UserError(f"model file not found: {model} — check the path, or use a model name from "
                        "`python -m weights list`")
    if args.size is not None and args.size not in SUPPORTED_SIZES:
        raise UserError(f"--size {args.size} is not supported; use {' or '.join(map(str, SUPPORTED_SIZES))}", code=2)
    device = resolve_device(args.device)
    names = class_names_from_flags(args)
    num_classes = args.num_classes or (len(names) + 1 if names else None)
    try:
        # the predictor drops what is below the drawing threshold early: NMS ranks by score, so this
        # changes nothing at or above it, and saves work
        return open_predictor(model, args.backend, device=device, amp=args.amp, compile=args.compile,
                              class_names=names, num_classes=num_classes, size=args.size, top_k=args.top_k,
                              conf_thresh=args.threshold, precision=args.precision, threads=args.threads)
    except UserError:
        raise
    except (RuntimeError, ValueError, OSError, KeyError, EOFError) as exc:  # anything the loader didn't word
        raise UserError(f"cannot load model {model}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        " — check that it is an SSD checkpoint from this project or ssd.pytorch") from None


def only_labels(only: Optional[str], class_names: Sequence[str]) -> Optional[List[int]]:
    """``--only a,b`` → the model labels (1..C-1) of those classes; None keeps every class."""
    if only is None:
        return None
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in class_names]
    if unknown:
        raise UserError(f"--only: {', '.join(repr(n) for n in unknown)} is not a class of this model — its classes "
                        f"are: {', '.join(class_names)}", code=2)
    return [list(class_names).index(n) + 1 for n in wanted]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    crf = check_flags(args)
    job = plan(args)
    source: Any = None
    if job.kind == "video":
        # probes: bad videos (and unreachable streams) fail here
        source = VideoReader(job.inputs[0], max_frames=args.max_frames, max_seconds=args.max_seconds)
        source.peek()  # and zero-frame / undecodable ones here, before the model is loaded
    predictor = load_predictor(args)
    only = only_labels(args.only, predictor.class_names)
    if job.kind == "webcam":
        source = WebcamReader(job.webcam, max_frames=args.max_frames)
    if job.kind in ("video", "webcam"):
        preview = Preview(f"{os.path.basename(args.input)} — object_detection.py") if args.show else None
        try:
            summary = detect_video(predictor, source, job.outputs[0], threshold=args.threshold,
                                   batch_size=args.batch_size, crf=crf, audio=args.audio, json_path=args.json_path,
                                   progress=args.progress, only=only, show=preview.show if preview else None)
        finally:
            if preview is not None:
                preview.close()
    else:
        summary = detect_images(predictor, job.inputs, job.outputs, threshold=args.threshold,
                                batch_size=args.batch_size, json_path=args.json_path, progress=args.progress,
                                only=only)
    print("\n".join(summary.lines(args.threshold)))
    return 0


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # `kill`/timeouts clean up like Ctrl-C: temporary files removed


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    run_cli(main)
