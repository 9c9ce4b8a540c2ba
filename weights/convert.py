"""Turn a trained SSD into a model for another class set, without training.

Usage::

    python -m weights.convert ssd300-coco --classes voc -o weights/ssd300_coco_as_voc.pth
    python -m weights.convert weights/ssd300_mAP_77.43_v2.pth --classes my_labels.txt -o weights/start.pth

Every layer but the class heads is copied; the background row and the rows of classes whose names match (case-
insensitive, with the VOC↔COCO synonyms of :mod:`weights.finetune`) are copied too; other classes start as a
from-scratch run would (xavier-uniform weights, zero bias, seeded by ``--seed``). The output is this project's
checkpoint format and keeps the source's prior set and recorded post-processing (:mod:`weights.behaviour`).
``train.py --pretrained`` does the same transfer at the start of a fine-tuning run.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from data.coco import COCO_CLASSES
from data.voc0712 import VOC_CLASSES
from utils.cli import Parser
from utils.errors import UserError, run_cli
from utils.labels import read_class_names
from utils.loading.checkpoint import save_checkpoint
from weights.finetune import Transfer, load_trained, transfer_state
from weights.hub import resolve_model_path

CLASS_SETS = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}


def class_set(spec: str) -> List[str]:
    """``voc`` / ``coco`` (any case) or a class-name file (one name per line)."""
    named = CLASS_SETS.get(spec.lower())
    return list(named) if named is not None else read_class_names(spec, what="--classes file", code=2)


def convert_classes(path: str, target_names: Sequence[str], seed: int = 0) -> Tuple[Dict[str, Any], Transfer]:
    """The checkpoint dict of ``path``'s model moved onto ``target_names`` (no background), and the transfer report."""
    state, names, stored, config = load_trained(path)
    new_config = config.with_classes(len(target_names) + 1)
    torch.manual_seed(seed)
    fresh = new_config.build("train").state_dict()
    new_state, report = transfer_state(state, names, fresh, list(target_names), path)
    config_dict = {**stored, **new_config.to_dict(), "converted_from": path}
    return {"model": new_state, "class_names": list(target_names), "config": config_dict}, report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = Parser(
        "-m weights.convert",
        description="Move a trained SSD onto another class set without training: shared layers and the rows of "
                    "matching classes (VOC/COCO synonyms included) are copied, new classes start from scratch.")
    parser.add_argument("model", help="trained SSD: a file or a registry name (python -m weights list)")
    parser.add_argument("--classes", required=True, help="voc, coco, or a text file with one class name per line")
    parser.add_argument("-o", "--output", required=True, help="where to write the new checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rows of new classes (default: %(default)s)")
    args = parser.parse_args(argv)
    names = class_set(args.classes)
    path = resolve_model_path(args.model, kind="detector")
    ckpt, report = convert_classes(path, names, args.seed)
    if not report.transferred:
        raise UserError(f"no class of {args.classes} matches one of {path}'s classes — nothing to convert; "
                        "train with train.py --pretrained instead", code=2)
    save_checkpoint(ckpt, args.output)
    print(report.summary())
    print(f"wrote {args.output}: {len(names)} classes + background")
    return 0


if __name__ == "__main__":
    run_cli(main)
