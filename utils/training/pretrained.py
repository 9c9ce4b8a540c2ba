"""``--pretrained NAME|PATH``: a new run (fine-tuning) that starts from a trained SSD of any class set.

The network is the pretrained file's (:class:`~utils.loading.config.ModelConfig`: size, width, BatchNorm, stem,
prior set and post-processing conventions) with the dataset's class count. Every layer but the class heads is
loaded; in each class head the background row and the rows of classes whose names match the dataset's
(case-insensitive, VOC↔COCO synonyms: :mod:`weights.finetune`) are copied, the other rows keep the initialisation
of a from-scratch run (including ``--background_prior``). Names of the registry (``ssd300-coco``) are downloaded
and converted by :mod:`weights.hub`; a local path always wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from utils.errors import UserError
from utils.loading.checkpoint import check_finite
from utils.loading.config import ModelConfig
from weights.finetune import Transfer, load_trained, transfer_state
from weights.hub import resolve_model_path


@dataclass
class PretrainedSource:
    """What ``--pretrained`` names: ``name`` as given, the local ``path`` it resolved to, the trained weights
    (``state``, released once loaded), their class names (no background) and architecture (``config``)."""

    name: str
    path: str
    state: Optional[Dict[str, torch.Tensor]]
    class_names: List[str]
    config: ModelConfig

    @classmethod
    def open(cls, name_or_path: str) -> "PretrainedSource":
        """Resolve a registry name (download / convert / cache) or take the path; read and check the file."""
        path = resolve_model_path(name_or_path, kind="detector")
        state, names, _, config = load_trained(path)
        check_finite(state, path)
        if len(names) != config.num_classes - 1:
            raise UserError(f"{path} lists {len(names)} class names for {config.num_classes - 1} classes — "
                            "re-save it with matching class_names")
        return cls(name_or_path, path, state, names, config)

    def describe(self) -> str:
        """``ssd300-coco (SSD300 width 1, 80 classes)`` — for the run's messages."""
        c = self.config
        where = self.name if self.name == self.path else f"{self.name} ({self.path})"
        return f"{where}: SSD{c.size} width {c.width:g}, {c.num_classes - 1} classes"


def load_pretrained_weights(model: nn.Module, source: PretrainedSource, class_names: Sequence[str]) -> Transfer:
    """Put ``source``'s weights into ``model`` (built from ``source.config.with_classes(len(class_names) + 1)``
    and initialised as a from-scratch run); returns what was transferred. Releases ``source.state``."""
    if source.state is None:
        raise RuntimeError("the pretrained weights were already loaded and released")
    state, report = transfer_state(source.state, source.class_names, model.state_dict(), list(class_names),
                                   source.path)
    model.load_state_dict(state, strict=True)
    source.state = None  # do not keep a second copy of the weights alive while training
    return report
