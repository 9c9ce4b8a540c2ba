"""The one inference path: RGB frames → preprocessed batch → network + Detect → detections in pixels.

eval.py, object_detection.py, the benchmarks and the exported-file runners all go through :class:`Predictor`;
:func:`utils.inference.opener.open_predictor` builds one from a model file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from data.transforms import normalize_uint8_batch, preprocess_batch, resize_batch_uint8
from ssd import SSD
from utils.device import autocast


@dataclass
class Detections:
    """Detections of one image, in pixels of the original image.

    boxes: ``[n, 4]`` float32 ``(xmin, ymin, xmax, ymax)``, 0-based continuous pixel coordinates.
    scores: ``[n]`` float32. labels: ``[n]`` int64 model labels in 1..C-1 (name = ``class_names[label - 1]``).
    """
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def detections_to_pixels(out: torch.Tensor, image_sizes: Sequence[Tuple[int, int]],
                         score_threshold: float = 0.0) -> List[Detections]:
    """``[B, C, K, 5]`` relative detections → one :class:`Detections` per image.

    One host sync per batch, however many images: the ``nonzero`` that sizes the kept rows (unavoidable, the
    count is data-dependent), then a single device→host copy of ``(b, label, score, box)`` rows packed in one
    float tensor. Scaling to pixels happens on the host, so the image sizes never travel to the device.
    """
    batch = out.shape[0]
    b, c, k = (out[..., 0] > score_threshold).nonzero(as_tuple=True)  # row-major: grouped by image
    rows = out[b, c, k]                                                # [M, 5]
    # exact for b and c (< 2**24); fp16/bf16/fp32 rows go to fp32 exactly, fp64 stays fp64
    dtype = torch.promote_types(out.dtype, torch.float32)
    # clip to the image: Detect (like ssd.pytorch) leaves decoded boxes unclipped
    packed = torch.cat([b.unsqueeze(1).to(dtype), c.unsqueeze(1).to(dtype), rows[:, :1].to(dtype),
                        rows[:, 1:].clamp(min=0, max=1).to(dtype)], dim=1).cpu().numpy()  # [M, 7]
    sizes = np.asarray(image_sizes, dtype=packed.dtype).reshape(-1, 2)          # (h, w)
    img = packed[:, 0].astype(np.int64)
    boxes = (packed[:, 3:] * sizes[img][:, [1, 0, 1, 0]]).astype(np.float32)   # (w, h, w, h)
    scores = packed[:, 2].astype(np.float32)
    labels = packed[:, 1].astype(np.int64)
    ends = np.cumsum(np.bincount(img, minlength=batch))
    starts = np.concatenate([[0], ends[:-1]])
    return [Detections(boxes[s:e], scores[s:e], labels[s:e]) for s, e in zip(starts.tolist(), ends.tolist())]


class Predictor:
    """Batched detector around a test-phase SSD (or any callable with the same output).

    Args:
        model: an :class:`ssd.SSD` (its network runs in :meth:`forward_raw`, then :meth:`ssd.SSD.postprocess`
            decodes), or any callable ``x [B, 3, S, S] float → [B, C, top_k, 5]`` (e.g. an exported-file runner).
        class_names: names without background.
        device: where the network runs; inputs are moved there.
        amp: bf16 autocast on CPU, fp16/bf16 autocast on CUDA.
        channels_last: NHWC memory format for the network (default on).
        score_threshold: detections at or below this score are dropped when converting to pixels.
        compile: ``torch.compile`` the network (not Detect) with weight freezing: ~8 % faster in bf16 on CPU after
            a one-off compilation of 10-30 s per input batch size; worth it for long videos and full test sets.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], class_names: Sequence[str], size: int,
                 device: torch.device = torch.device("cpu"), amp: bool = False,
                 score_threshold: float = 0.0, channels_last: Optional[bool] = None,
                 compile: bool = False) -> None:
        self.model = model
        self.class_names = list(class_names)
        self.size = size
        self.device = device
        self.amp = amp
        self.score_threshold = score_threshold
        # channels_last is faster for oneDNN (CPU) and cuDNN convolutions in fp32 and reduced precision alike
        self.channels_last = True if channels_last is None else channels_last
        if isinstance(model, torch.nn.Module):
            model.eval().to(device)
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
        # the network part of an SSD, run by forward_raw; None for other callables (run calls them whole)
        self._network: Optional[Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]] = (
            model.forward_raw if isinstance(model, SSD) else None)
        if compile:
            if self._network is None:
                raise ValueError("compile=True needs an SSD model")
            # freezing turns weights into constants, so oneDNN can prepack them and fuse conv + ReLU; given as an
            # option of this compilation (not inductor's global config), it changes nothing else in the process
            self._network = torch.compile(model.forward_raw, dynamic=False, options={"freezing": True})

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 ``HxWx3`` frames → ``[B, 3, S, S]`` float32 (the shared preprocessing)."""
        return preprocess_batch(list(images), self.size)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def forward_raw(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The network alone (compiled when ``compile=True``, under autocast when ``amp``): preprocessed
        ``[B, 3, S, S]`` → ``loc [B, P, 4]``, ``conf [B, P, C]`` logits on ``self.device``. SSD models only."""
        if self._network is None:
            raise TypeError("forward_raw needs a Predictor around an SSD model, not an exported-file runner")
        x = self._to_device(x)
        with autocast(self.device, self.amp):
            return self._network(x)

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch → raw detections ``[B, C, top_k, 5]`` (relative coordinates) on ``self.device``."""
        if self._network is not None:
            # Detect works in float32 whatever the network ran in, so it runs outside autocast
            return self.model.postprocess(*self.forward_raw(x))
        x = self._to_device(x)
        with autocast(self.device, self.amp):
            return self.model(x)

    def predict_batch(self, x: torch.Tensor, image_sizes: Sequence[Tuple[int, int]]) -> List[Detections]:
        """Preprocessed ``[B, 3, S, S]`` + original ``(h, w)`` per image → detections in pixels."""
        return detections_to_pixels(self.run(x), image_sizes, self.score_threshold)

    def predict(self, images: Sequence[np.ndarray]) -> List[Detections]:
        """RGB uint8 frames (any sizes) → detections in pixels of each frame.

        Same numbers as ``predict_batch(preprocess(images), sizes)``, but only the resize runs on the CPU: the
        batch travels to ``self.device`` as uint8 (4x fewer bytes than float32; from pinned memory, without
        blocking, on CUDA) and is converted and mean-subtracted there.
        """
        if len(images) == 0:
            return []
        images = list(images)
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        device = torch.device(self.device)
        frames = torch.empty((len(images), self.size, self.size, 3), dtype=torch.uint8,
                             pin_memory=device.type == "cuda")
        resize_batch_uint8(images, self.size, out=frames.numpy())  # resized straight into the (pinned) buffer
        x = normalize_uint8_batch(frames.to(device, non_blocking=True))
        return self.predict_batch(x, sizes)

