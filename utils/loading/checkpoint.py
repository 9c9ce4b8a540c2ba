"""Checkpoint reading and writing, shared by every script.

Accepted files: ssd.pytorch state_dicts (``ssd300_mAP_77.43_v2.pth``), state_dicts saved from DataParallel/DDP
(``module.`` prefix), and this project's training checkpoints (a dict with ``model``, ``optimizer``, ...,
``class_names``, ``config``). Every load is ``torch.load(..., weights_only=True)``: a file that would need to run
code to unpickle is refused.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from utils.errors import UserError
from utils.loading.config import ModelConfig, infer_architecture  # noqa: F401  (re-exported)
from utils.io import atomic_write, pickle_globals

CHECKPOINT_FORMAT = "ssd-ckpt-v1"


def read_checkpoint(path: str) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors for bad files.

    A file that would run code when unpickled is refused and reported as such (naming what it would call),
    whatever torch's wording; truncated and foreign files get their own messages.
    """
    # globals a weights-only load accepts besides torch's own: not a reason for refusal
    plain_globals = {"collections.OrderedDict", "collections.Counter", "_codecs.encode", "builtins.set",
                     "builtins.frozenset", "builtins.bytearray", "builtins.complex", "builtins.slice"}
    if not os.path.exists(path):
        raise UserError(f"model file not found: {path} — check the path (train one with train.py, or put the "
                        "downloaded .pth there)")
    if os.path.isdir(path):
        raise UserError(f"model path is a folder, not a checkpoint file: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"model file is empty: {path} — the download or save was interrupted; get the file again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError,
            KeyError, IndexError, TypeError) as exc:
        # decide the reason from the file itself (its pickle's imports, read with pickletools: nothing runs), not
        # from torch's wording, which changes between versions
        callables = [g for g in pickle_globals(path) if not g.startswith("torch.") and g not in plain_globals]
        if callables or (isinstance(exc, pickle.UnpicklingError) and "global" in str(exc).lower()):
            named = f" ({', '.join(callables[:3])}{', ...' if len(callables) > 3 else ''})" if callables else ""
            raise UserError(f"refusing to load {path}: it contains Python objects that could run code when loaded"
                            f"{named}; only tensors and plain data are accepted — use a checkpoint from a source you "
                            "trust, re-saved as a plain state_dict") from None
        if isinstance(exc, pickle.UnpicklingError):  # plain garbage ("invalid load key", "Unsupported operand")
            raise UserError(f"not a PyTorch checkpoint (or truncated): {path} — re-download or re-create "
                            "it") from None
        raise UserError(f"cannot read checkpoint {path}: not a PyTorch checkpoint or truncated "
                        f"({type(exc).__name__}) — re-download or re-create it") from None


def split_checkpoint(obj: Any, path: str = "<checkpoint>") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Return ``(state_dict, meta)``; ``meta`` may hold ``class_names`` and ``config`` (empty for bare files)."""
    meta: Dict[str, Any] = {}
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        state = obj["model"]
        meta = {k: obj[k] for k in ("class_names", "config", "iteration", "format") if k in obj}
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state = obj["state_dict"]
    elif isinstance(obj, Mapping):
        state = obj
    else:
        raise UserError(f"{path} is not a model checkpoint (it holds a {type(obj).__name__}, not a state_dict)")
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a model checkpoint: it holds no weight tensors")
    state = strip_prefix(dict(state))
    return state, meta


def strip_prefix(state: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DataParallel / DDP put on every key."""
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def check_finite(state: Mapping[str, torch.Tensor], path: str) -> None:
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"checkpoint {path} has NaN/inf values in {k} — the run that wrote it diverged; "
                            "use an earlier checkpoint")


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Strict load with a one-line summary of missing/unexpected keys or shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:3]}{' ...' if len(wrong) > 3 else ''}")
        raise UserError(f"checkpoint {path} does not fit this model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def load_model(path: str, phase: str = "test", num_classes: Optional[int] = None, size: Optional[int] = None,
               **model_kwargs: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the SSD that a checkpoint describes and load it. Returns ``(model on CPU, meta)``.

    ``num_classes`` / ``size``, when given, must agree with the file (a clear error says what each has).
    ``meta`` holds ``class_names`` (or None), ``config`` (as stored), ``model_config`` (the
    :class:`~utils.loading.config.ModelConfig` the model was built from) and ``iteration``.
    """
    state, meta = split_checkpoint(read_checkpoint(path), path)
    config = ModelConfig.from_state(state, meta.get("config"), path)
    if num_classes is not None and num_classes != config.num_classes:
        raise UserError(f"checkpoint has {config.num_classes} classes (conf.0 has "
                        f"{tuple(state['conf.0.weight'].shape)[0]} channels), model was built for {num_classes}: "
                        f"{path} — pass the matching --dataset / --num_classes or a matching checkpoint")
    if size is not None and size != config.size:
        raise UserError(f"checkpoint {path} is an SSD{config.size}, but --size {size} was asked for — use "
                        f"--size {config.size}")
    check_finite(state, path)
    model = config.build(phase, **model_kwargs)
    load_into(model, state, path)
    names = meta.get("class_names")
    if names is not None and len(names) != config.num_classes - 1:
        raise UserError(f"checkpoint {path} lists {len(names)} class names for {config.num_classes - 1} classes")
    return model, {"class_names": list(names) if names is not None else None,
                   "config": dict(meta.get("config") or {}), "model_config": config,
                   "iteration": meta.get("iteration")}


def load_state_dict_into(model: nn.Module, path: str) -> Dict[str, Any]:
    """Load a checkpoint's weights into an existing model (strict). Returns the checkpoint's meta."""
    state, meta = split_checkpoint(read_checkpoint(path), path)
    check_finite(state, path)
    load_into(model, state, path)
    return meta


def load_basenet(model: nn.Module, path: str) -> None:
    """Load ``vgg16_reducedfc.pth`` (keys ``0.weight`` ... ``33.bias``) into ``model.vgg``."""
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a VGG base-network state_dict (expected keys 0.weight ... 33.bias)")
    state = strip_prefix(dict(obj))
    state = {k[len("vgg."):] if k.startswith("vgg.") else k: v for k, v in state.items()}
    load_into(model.vgg, state, path)


def save_checkpoint(obj: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a kill never leaves a corrupt file."""
    with atomic_write(path, suffix=".tmp") as tmp:
        # through a Python file object, so that a full disk surfaces as OSError(ENOSPC/EDQUOT) (chained to torch's
        # RuntimeError): atomic_write turns it into "no space left on device while writing <path>"
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)


def model_config(model: nn.Module) -> Dict[str, Any]:
    """The architecture fields stored in a checkpoint's ``config`` (enough to rebuild the model)."""
    return ModelConfig.from_model(model).to_dict()

