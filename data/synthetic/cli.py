"""The command line of ``python -m data.synthetic``: write the dataset (``--out``) and/or a video (``--video``)."""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

from data.synthetic.dataset import DEFAULT_TEST_FRAC, DEFAULT_VAL_FRAC, generate_dataset
from data.synthetic.shapes import SHAPE_CLASSES, shape_indices
from data.synthetic.video import generate_video
from utils.cli import Parser
from utils.errors import UserError


def shape_list(text: str) -> List[str]:
    """``--classes circle,square``: the names, checked (an unknown one is a usage error listing the shapes)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    try:
        shape_indices(names)
    except UserError as exc:
        raise argparse.ArgumentTypeError(exc.message.split(": ", 1)[-1]) from None
    return names


def build_parser() -> argparse.ArgumentParser:
    p = Parser("-m data.synthetic", description="Write the synthetic shapes dataset (custom VOC layout + COCO "
                                                "JSON) and/or a synthetic video with per-frame ground truth.")
    p.add_argument("--out", help="dataset folder to write (replaced if it is an earlier synthetic dataset)")
    p.add_argument("--num", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--val-frac", type=float, default=DEFAULT_VAL_FRAC, help="fraction for val (default 0.05)")
    p.add_argument("--test-frac", type=float, default=DEFAULT_TEST_FRAC, help="fraction for test (default 0.15); "
                   "train gets the rest")
    p.add_argument("--backgrounds", help="optional folder of photos used as some of the backgrounds")
    p.add_argument("--classes", type=shape_list, default=None, metavar="NAMES",
                   help=f"draw only these shapes, comma-separated, e.g. circle,square,triangle (labels.txt lists "
                        f"them in this order); default all: {','.join(SHAPE_CLASSES)}")
    p.add_argument("--video", help="also write a synthetic video here (.mp4/.mkv/.mov/.avi) + PATH.json")
    p.add_argument("--frames", type=int, default=150, help="video frames (default 150)")
    p.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    p.add_argument("--width", type=int, default=640, help="video width (default 640)")
    p.add_argument("--height", type=int, default=360, help="video height (default 360)")
    p.add_argument("--audio", action="store_true", help="add an AAC sine-tone audio track to the video")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out and not args.video:
        raise UserError("nothing to do: pass --out DIR (dataset) and/or --video PATH", code=2)
    if args.out:
        s = generate_dataset(args.out, args.num, args.seed, args.val_frac, args.test_frac, args.backgrounds,
                             progress=True, classes=args.classes)
        print(f"wrote {s['num_images']} images ({s['num_objects']} objects, {s['num_difficult']} difficult; "
              f"splits {s['splits']}) to {s['out']} in {s['seconds']:.1f} s ({s['images_per_s']:.0f} images/s)")
    if args.video:
        v = generate_video(args.video, args.frames, args.fps, args.width, args.height, args.seed, args.audio,
                           classes=args.classes)
        print(f"wrote {v['num_frames']} frames {v['width']}x{v['height']} @ {v['fps']:g} fps"
              f"{' with audio' if v['audio'] else ''} to {v['path']} (ground truth {v['ground_truth']})")
    return 0
