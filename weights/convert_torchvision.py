"""``python -m weights.convert_torchvision SRC -o DST``: torchvision's SSD300-VGG16 → this project's checkpoint.

The conversion itself is :mod:`weights.torchvision_ssd` (also run by ``weights.hub`` for the ``ssd300-coco`` name);
its names are re-exported here for ``from weights.convert_torchvision import convert_file``.
"""
from __future__ import annotations

from typing import Optional, Sequence

from utils.cli import Parser
from utils.errors import run_cli
from weights.torchvision_ssd import convert_file, convert_torchvision_ssd  # noqa: F401 (re-exported)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = Parser(
        "-m weights.convert_torchvision",
        description="Convert torchvision's SSD300-VGG16 (ssd300_vgg16_coco-b556d3b4.pth) into this project's "
                    "checkpoint format (ssd.pytorch keys, background + the 80 COCO classes, torchvision's "
                    "post-processing recorded in its config).")
    parser.add_argument("src", help="torchvision ssd300_vgg16 state_dict")
    parser.add_argument("-o", "--output", required=True, help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
    ckpt = convert_file(args.src, args.output)
    print(f"wrote {args.output}: SSD300, {len(ckpt['class_names'])} classes + background, COCO priors, "
          "torchvision post-processing (prior_clip wh, clip before NMS, 400 candidates per class, 200 per image)")
    return 0


if __name__ == "__main__":
    run_cli(main)
