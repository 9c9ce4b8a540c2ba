"""Pretrained models and weight converters (see README.md).

``registry`` (the table of named models), ``hub`` (download / verify / convert / cache; ``resolve_model_path``),
``convert_torchvision`` and ``convert_vgg`` (file converters), ``finetune`` and ``convert`` (a trained SSD onto a new
class set), ``behaviour`` (post-processing recorded in checkpoints). ``python -m weights list|fetch``.
"""
