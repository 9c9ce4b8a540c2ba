"""Evaluate an SSD: VOC mAP exactly as the official devkit computes it, COCO AP through pycocotools.

    # VOC2007 test (the paper's number), 11-point metric
    python eval.py --trained_model weights/ssd300_mAP_77.43_v2.pth --voc_root ~/data/VOCdevkit/
    # a custom dataset, with COCO AP as well
    python eval.py --trained_model runs/x/ssd300_final.pth --dataset custom --dataset_root data/mine --coco
    # score results files you already have (no model)
    python eval.py --results_dir eval/ --voc_root ~/data/VOCdevkit/

The model runs batched through the shared inference path (utils.inference.predictor.Predictor). Detections are
written as the devkit's ``comp4_det_<set>_<class>.txt`` files into ``--save_folder`` and scored from those
files, so the printed AP is what the devkit and ``--results_dir`` give on them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from data import build_dataset
from data.common import check_dir
from utils.cli import (Parser, add_inference_flags, batch_size, check_writable_folder, non_negative_int, positive_int,
                       score_threshold, str2bool)
from utils.device import resolve_device
from utils.errors import UserError, run_cli
from utils.inference import open_predictor
from utils.io import atomic_write
from utils.metrics.coco import load_coco_gt
from utils.metrics.evaluation import coco_json_path, evaluate_model, json_summary, plot_pr_curves, score_results
from utils.metrics.voc import format_ap_table
from weights.hub import resolve_model_path

DEFAULT_MODEL = "weights/ssd300_mAP_77.43_v2.pth"
DEFAULT_ROOTS = {"voc": "~/data/VOCdevkit", "coco": "~/data/coco"}
DEFAULT_SETS = {"voc": "test", "custom": "test", "coco": "minival2014"}


def _dataset_name(s: str) -> str:
    """Case-insensitive --dataset: voc -> VOC, coco -> COCO, Custom -> custom."""
    return {"voc": "VOC", "coco": "COCO", "custom": "custom"}.get(s.strip().lower(), s)

def build_parser() -> argparse.ArgumentParser:
    p = Parser("eval.py", description="Evaluate an SSD on VOC / COCO / a custom dataset, or score saved results files.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--trained_model", default=DEFAULT_MODEL,
                   help="checkpoint (an ssd.pytorch .pth or one of this repo's training checkpoints), an exported "
                        "model, or a pretrained model name (python -m weights list)")
    p.add_argument("--save_folder", default="eval/", help="where the results files are written")
    p.add_argument("--confidence_threshold", type=score_threshold, default=0.01,
                   help="per-class score threshold before NMS")
    p.add_argument("--top_k", type=positive_int, default=200, help="detections kept per class and image after NMS")
    p.add_argument("--cuda", type=str2bool, default=None,
                   help="legacy: false forces the CPU when --device is auto")
    p.add_argument("--voc_root", default=None, help="VOCdevkit folder (legacy name of --dataset_root for VOC)")
    p.add_argument("--cleanup", type=str2bool, nargs="?", const=True, default=False,
                   help="delete the results files after scoring")
    p.add_argument("--dataset", default="VOC", type=_dataset_name,
                   choices=("VOC", "COCO", "custom"), help="dataset kind")
    p.add_argument("--dataset_root", default=None,
                   help="dataset folder (default ~/data/VOCdevkit for VOC, ~/data/coco for COCO)")
    p.add_argument("--year", default="2007", help="VOC year")
    p.add_argument("--set", dest="set_name", default=None,
                   help="image set: VOC/custom split name (default test), COCO instances_<set>.json (default "
                        "minival2014)")
    p.add_argument("--size", type=int, choices=(200, 300, 512), default=None,
                   help="input size (default: the checkpoint's)")
    p.add_argument("--batch_size", type=batch_size, default=8, help="images per forward pass")
    p.add_argument("--num_workers", type=non_negative_int, default=2, help="image loading processes")
    add_inference_flags(p)
    p.add_argument("--metric", choices=("voc07", "area"), default="voc07",
                   help="VOC AP: voc07 = 11-point (VOC2007 test), area = area under the PR curve (VOC2010+)")
    p.add_argument("--results_dir", default=None,
                   help="score the comp4_det_<set>_<class>.txt files in DIR (no model is run)")
    p.add_argument("--coco", action="store_true",
                   help="custom datasets: also report COCO AP (needs annotations/instances_<set>.json)")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write a JSON summary")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help="write per-class precision-recall curves as PNG (needs matplotlib)")
    p.add_argument("--max_images", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Checks across flags, before anything is loaded (single values are checked by the parser's validators)."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (optional, heavy: only probed when --plot is given)
        except ImportError:
            raise UserError("--plot needs matplotlib — pip install matplotlib (or drop --plot)", code=2) from None
        if args.dataset == "COCO":
            raise UserError("--plot draws VOC precision-recall curves; it is not available for --dataset COCO",
                            code=2)


def dataset_root(args: argparse.Namespace) -> str:
    key = args.dataset.lower()
    root = args.dataset_root or (args.voc_root if key == "voc" else None) or DEFAULT_ROOTS.get(key)
    if root is None:
        raise UserError("--dataset custom needs --dataset_root (the folder holding labels.txt, Annotations/, "
                        "JPEGImages/ and ImageSets/Main/)", code=2)
    return os.path.expanduser(root)


def _check_output_folder(folder: str, flag: str = "--save_folder") -> None:
    check_writable_folder(folder, flag)


def _check_root(args: argparse.Namespace, root: str) -> None:
    hint = ("pass --dataset_root pointing at the COCO folder" if args.dataset == "COCO" else
            "pass --dataset_root (or --voc_root) pointing at the dataset")
    check_dir(root, "dataset root", hint)


def run_model(args: argparse.Namespace, root: str, set_name: str) -> Dict[str, Any]:
    """Detect on the dataset with the checkpoint and score (results files in --save_folder)."""
    device = resolve_device(args.device, args.cuda)
    _check_root(args, root)
    _check_output_folder(args.save_folder)
    if args.json_path:  # before the (long) evaluation, not after it
        _check_output_folder(os.path.dirname(os.path.abspath(args.json_path)), "--json folder")
    args.trained_model = resolve_model_path(args.trained_model)  # a model name -> its cached file; a path wins
    predictor = open_predictor(args.trained_model, args.backend, device=device, amp=args.amp, compile=args.compile,
                               size=args.size, top_k=args.top_k, conf_thresh=args.confidence_threshold,
                               precision=args.precision, threads=args.threads)
    # keep_difficult: the devkit scores difficult objects as "ignore", so they must be loaded
    dataset = build_dataset(args.dataset, root, set_name, transform=None, keep_difficult=True, year=args.year)
    if len(dataset) == 0:
        raise UserError("the evaluation set has no images — check --set / the split file")
    coco_gt = None
    if args.coco and args.dataset != "COCO":
        coco_gt = load_coco_gt(coco_json_path(root, set_name))
    print(f"evaluating {args.trained_model} on {args.dataset} {set_name} ({len(dataset)} images, "
          f"SSD{predictor.size}, {device}, batch {args.batch_size})", file=sys.stderr)
    return evaluate_model(predictor, dataset, args.batch_size, args.num_workers, args.metric, set_name=set_name,
                          save_folder=args.save_folder, coco=args.coco, coco_gt=coco_gt, progress=args.progress,
                          max_images=args.max_images)


def score_results_dir(args: argparse.Namespace, root: str, set_name: str) -> Dict[str, Any]:
    """Score the results files in --results_dir (no model)."""
    if not os.path.isdir(args.results_dir):
        raise UserError(f"results folder not found: {args.results_dir} — pass the folder eval.py wrote its "
                        "comp4_det_<set>_<class>.txt files to")
    _check_root(args, root)
    # the library's checks, worded for the flags
    if args.dataset == "VOC" and not os.path.isdir(os.path.join(root, "Annotations")):
        check_dir(os.path.join(root, f"VOC{args.year}"), f"VOC{args.year} folder",
                  f"the VOCdevkit root {root} needs a VOC{args.year}/ folder (or choose another --year)")
    coco_results = os.path.join(args.results_dir, f"coco_results_{set_name}.json")
    if (args.dataset == "COCO" or args.coco) and not os.path.isfile(coco_results):
        raise UserError(f"COCO results file missing: {coco_results} — run eval.py with a model to write it, or "
                        "point --results_dir at the folder holding it")
    return score_results(args.results_dir, args.dataset, root, set_name, args.year, args.metric, args.coco)


def report(result: Dict[str, Any]) -> str:
    lines = [format_ap_table(result)]
    coco = result.get("coco")
    if coco:
        lines.append("COCO (pycocotools): " + "  ".join(f"{k} {coco[k]:.4f}" for k in
                                                       ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    if result.get("images_per_second"):
        lines.append(f"{result['num_images']} images in {result['seconds']:.1f} s: "
                     f"{result['images_per_second']:.1f} images/s (loading, network and NMS included)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    root = dataset_root(args)
    set_name = args.set_name or DEFAULT_SETS[args.dataset.lower()]
    if args.results_dir:
        result = score_results_dir(args, root, set_name)
    else:
        result = run_model(args, root, set_name)
    print(report(result))
    if args.plot:
        paths = plot_pr_curves(result, args.plot)
        print(f"wrote {len(paths)} precision-recall curves to {args.plot}", file=sys.stderr)
    written: List[str] = result.get("results_files", [])
    if args.cleanup and written:
        for path in written:  # only what this run wrote; --results_dir inputs are never deleted
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        result["results_files"] = []
    elif written:
        print(f"results files: {os.path.dirname(written[0]) or '.'}", file=sys.stderr)
    if args.json_path:
        summary = json_summary(result, dataset=args.dataset, set=set_name,
                               model=None if args.results_dir else args.trained_model,
                               results_dir=args.results_dir)
        try:
            with atomic_write(args.json_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2)
        except OSError as exc:
            raise UserError(f"cannot write --json {args.json_path}: {exc.strerror or exc} — choose another path") \
                from None
    return 0


if __name__ == "__main__":
    run_cli(main)
