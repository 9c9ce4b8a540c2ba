"""Device selection shared by the CLIs (``--device auto|cpu|cuda[:N]``)."""
from __future__ import annotations

import torch

from utils.errors import UserError


def resolve_device(name: str = "auto", cuda_flag: bool | None = None) -> torch.device:
    """Turn a ``--device`` value into a torch.device.

    ``cuda_flag`` is ssd.pytorch's legacy ``--cuda``: False forces the CPU when ``name`` is auto. Choosing a CUDA
    device also turns on cuDNN's autotuner (SSD's input size is fixed, so the per-shape search pays once).
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if cuda_flag is False or not torch.cuda.is_available():
            return torch.device("cpu")
        return _cuda(torch.device("cuda"))
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but CUDA is not available on this machine; "
                            "use --device cpu (or auto)", code=2)
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present", code=2)
        return _cuda(dev)
    raise UserError(f"--device {name!r} is not understood; use auto, cpu, cuda or cuda:N", code=2)


def _cuda(dev: torch.device) -> torch.device:
    torch.backends.cudnn.benchmark = True
    return dev


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of ``--amp``: bf16 on CPUs and on GPUs that support it, fp16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """``torch.autocast`` for ``--amp`` (a no-op context when disabled)."""
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=enabled)
