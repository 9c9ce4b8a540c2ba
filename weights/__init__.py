"""Pretrained models and weight converters (see README.md).

``registry`` (the table of named models), ``hub`` (download / verify / convert / cache; ``resolve_model_path``),
``torchvision_ssd`` and ``vgg_base`` (the file conversions), ``finetune`` (class-row transfer), ``behaviour``
(post-processing recorded in checkpoints). Command lines: ``python -m weights list|fetch``,
``python -m weights.convert_torchvision``, ``python -m weights.convert_vgg``, ``python -m weights.convert`` (a
trained SSD onto a new class set) — thin CLIs over the library modules, which ``hub`` (and through it train.py)
imports without any CLI code.
"""
