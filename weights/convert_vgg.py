"""``python -m weights.convert_vgg SRC -o DST [--fold-input-norm]``: torchvision's ImageNet VGG-16 → SSD's base
network ``vgg16_reducedfc.pth``.

The conversion itself is :mod:`weights.vgg_base` (also run by ``weights.hub`` for the ``vgg16-imagenet`` name); its
names are re-exported here for ``from weights.convert_vgg import convert_file``.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from utils.cli import Parser
from utils.errors import run_cli
from weights.vgg_base import VGG16_CONVS, check_vgg16_state_dict, convert_file, convert_vgg16  # noqa: F401


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = Parser(
        "-m weights.convert_vgg",
        description="Convert torchvision's ImageNet VGG-16 (vgg16-397923af.pth) into SSD's base network "
                    "vgg16_reducedfc.pth (conv6/conv7 decimated from fc6/fc7 as in the SSD paper).")
    parser.add_argument("src", help="torchvision VGG-16 state_dict, e.g. vgg16-397923af.pth")
    parser.add_argument("-o", "--output", "--out", dest="output", default=os.path.join("weights", "vgg16_reducedfc.pth"),
                        help="where to write the SSD base network (default: %(default)s)")
    parser.add_argument("--fold-input-norm", action="store_true",
                        help="rescale conv1_1 so the network expects SSD's 0-255 mean-subtracted input instead of "
                             "torchvision's (x/255 - mean)/std")
    args = parser.parse_args(argv)
    out = convert_file(args.src, args.output, args.fold_input_norm)
    params = sum(v.numel() for v in out.values())
    print(f"wrote {args.output}: {len(out)} tensors, {params:,} parameters (conv1_1 ... conv7); "
          "train.py loads it into the SSD's vgg")
    return 0


if __name__ == "__main__":
    run_cli(main)
