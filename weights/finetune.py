"""Start a model for a new class set from a trained SSD: everything but the class rows is copied.

:func:`transfer_state` takes the trained state_dict with its class names and a freshly initialised state_dict of the
target model (initialised exactly as a from-scratch run would be) with the new names, and returns the target
state: every tensor except the class heads copied from the trained model; in each class head (``conf.k``) the
background row and the rows of classes whose names match (case-insensitive, VOC↔COCO synonyms) copied, all other
rows left as initialised.

Class-head layout: ``conf.k.weight`` is ``[A * C, in, 3, 3]`` (``bias`` ``[A * C]``) with rows grouped per anchor,
row ``a * C + c`` (anchor-major, as the NHWC flatten in ``SSD.forward_raw`` requires), so a class is ``A`` rows
``C`` apart, not a contiguous block.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from utils.errors import UserError
from utils.loading.checkpoint import read_checkpoint, split_checkpoint
from utils.loading.names import default_class_names
from utils.loading.config import ModelConfig

# VOC name -> COCO name; matching uses the COCO spelling for both sides
SYNONYMS: Dict[str, str] = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch",
                            "tvmonitor": "tv", "diningtable": "dining table", "pottedplant": "potted plant"}


def canonical(name: str) -> str:
    """Lower-case, trimmed, with VOC's spellings mapped to COCO's (``"TVMonitor"`` → ``"tv"``)."""
    key = " ".join(name.strip().lower().split())
    return SYNONYMS.get(key, key)


def match_classes(source: Sequence[str], target: Sequence[str]) -> List[Optional[int]]:
    """For each target class (no background), the index of the matching source class (no background) or None."""
    index: Dict[str, int] = {}
    for i, name in enumerate(source):
        index.setdefault(canonical(name), i)
    return [index.get(canonical(name)) for name in target]


@dataclass
class Transfer:
    """What :func:`transfer_state` did: ``transferred`` = (target name, source name) pairs; ``new`` = target names
    whose rows start as initialised."""
    transferred: List[Tuple[str, str]] = field(default_factory=list)
    new: List[str] = field(default_factory=list)

    def summary(self) -> str:
        moved = ", ".join(t if t == s else f"{t} (from {s})" for t, s in self.transferred) or "none"
        fresh = ", ".join(self.new) or "none"
        n = len(self.transferred)
        return f"{n} class{'' if n == 1 else 'es'} transferred: {moved}; {len(self.new)} new: {fresh}"


def _is_class_head(key: str) -> bool:
    return key.startswith("conf.") and key.endswith((".weight", ".bias"))


def _head_rows(tensor: torch.Tensor, num_classes: int, key: str) -> torch.Tensor:
    """``[A * C, ...]`` → ``[A, C, ...]`` view (UserError if the rows do not split into whole anchors)."""
    if tensor.shape[0] % num_classes:
        raise UserError(f"{key} has {tensor.shape[0]} rows, not a multiple of {num_classes} classes")
    return tensor.view(tensor.shape[0] // num_classes, num_classes, *tensor.shape[1:])


def transfer_state(source: Mapping[str, torch.Tensor], source_names: Sequence[str],
                   target: Mapping[str, torch.Tensor], target_names: Sequence[str],
                   path: str = "<pretrained>") -> Tuple[Dict[str, torch.Tensor], Transfer]:
    """The target model's state with the trained model's weights (see the module docstring).

    ``source`` / ``target``: state_dicts of the same architecture except the class count; ``*_names`` without
    background. Returns ``(state, Transfer)``; ``target`` is not modified.
    """
    cs, ct = len(source_names) + 1, len(target_names) + 1
    matches = match_classes(source_names, target_names)
    out: Dict[str, torch.Tensor] = {}
    for key, fresh in target.items():
        if key not in source:
            raise UserError(f"{path} does not fit the new model: it has no {key} (a different architecture — "
                            "pass a model of the same size/width/stem)")
        if not _is_class_head(key):
            if source[key].shape != fresh.shape:
                raise UserError(f"{path} does not fit the new model: {key} is {tuple(source[key].shape)}, the model "
                                f"needs {tuple(fresh.shape)}")
            out[key] = source[key].detach().clone().to(fresh.dtype)
            continue
        src, dst = _head_rows(source[key], cs, key), _head_rows(fresh.detach().clone(), ct, key)
        if src.shape[0] != dst.shape[0] or src.shape[2:] != dst.shape[2:]:
            raise UserError(f"{path} does not fit the new model: {key} has {src.shape[0]} anchors x "
                            f"{tuple(src.shape[2:])}, the model {dst.shape[0]} x {tuple(dst.shape[2:])}")
        dst[:, 0] = src[:, 0]  # background
        for j, i in enumerate(matches):
            if i is not None:
                dst[:, j + 1] = src[:, i + 1]
        out[key] = dst.reshape(fresh.shape)
    extra = [k for k in source if k not in target]
    if extra:
        raise UserError(f"{path} does not fit the new model: unexpected keys {extra[:3]}")
    report = Transfer([(t, source_names[i]) for t, i in zip(target_names, matches) if i is not None],
                      [t for t, i in zip(target_names, matches) if i is None])
    return out, report


def load_trained(path: str) -> Tuple[Dict[str, torch.Tensor], List[str], Dict[str, Any], ModelConfig]:
    """``(state, class_names, stored config, ModelConfig)`` of a trained SSD file (any accepted format)."""
    state, meta = split_checkpoint(read_checkpoint(path), path)
    stored = dict(meta.get("config") or {})
    config = ModelConfig.from_state(state, stored, path)
    names = list(meta.get("class_names") or default_class_names(config.num_classes))
    return state, names, stored, config


def load_pretrained_into(model: torch.nn.Module, class_names: Sequence[str], path: str) -> Transfer:
    """``train.py --pretrained``: put a trained SSD file's weights into ``model`` (already initialised the way a
    from-scratch run is, for ``class_names`` without background) via :func:`transfer_state`. Returns the report.

    UserError (one line) if the file's architecture differs from the model's (size, width, stem, batch norm).
    """
    state, names, _, _ = load_trained(path)
    new_state, report = transfer_state(state, names, model.state_dict(), list(class_names), path)
    model.load_state_dict(new_state, strict=True)
    return report
