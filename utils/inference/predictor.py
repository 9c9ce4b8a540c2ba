"""The one inference path: RGB frames → preprocessed batch → network + Detect → detections in pixels.

eval.py, object_detection.py, the benchmark and the ONNX backend all go through :class:`Predictor`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from utils.loading.checkpoint import default_class_names, load_model
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
        model: callable ``x [B, 3, S, S] float → [B, C, top_k, 5]`` (an ``SSD`` in phase ``'test'``).
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
        self._raw = None
        if compile:
            if not hasattr(model, "forward_raw"):
                raise ValueError("compile=True needs an SSD model")
            import torch._inductor.config as inductor_config
            # freezing turns weights into constants, so oneDNN can prepack them and fuse conv + ReLU
            inductor_config.freezing = True
            self._raw = torch.compile(model.forward_raw, dynamic=False)

    @classmethod
    def from_checkpoint(cls, path: str, device: torch.device = torch.device("cpu"), amp: bool = False,
                        num_classes: Optional[int] = None, size: Optional[int] = None, top_k: int = 200,
                        conf_thresh: float = 0.01, nms_thresh: float = 0.45, class_names: Optional[Sequence[str]] = None,
                        score_threshold: float = 0.0, channels_last: Optional[bool] = None,
                        compile: bool = False) -> "Predictor":
        """Load any accepted checkpoint (see utils.loading.checkpoint) into a test-phase SSD."""
        model, meta = load_model(path, "test", num_classes=num_classes, size=size, top_k=top_k,
                                 conf_thresh=conf_thresh, nms_thresh=nms_thresh)
        names = class_names or meta["class_names"] or default_class_names(model.num_classes)
        if len(names) != model.num_classes - 1:
            from utils.errors import UserError
            raise UserError(f"{len(names)} class names given for a model with {model.num_classes - 1} classes "
                            f"({path})")
        return cls(model, names, model.size, device, amp, score_threshold, channels_last, compile)

    @classmethod
    def from_onnx(cls, path: str, **kwargs: Any) -> "Predictor":
        """An exported ``.onnx`` model on ONNX Runtime (see utils.deploy.runners.predictor_from_onnx)."""
        from utils.deploy.runners import predictor_from_onnx
        return predictor_from_onnx(path, predictor_cls=cls, **kwargs)

    @classmethod
    def load(cls, path: str, backend: str = "auto", **kwargs: Any) -> "Predictor":
        """Open a model file for the CLIs: ``.onnx`` → ONNX Runtime, anything else → a PyTorch checkpoint.

        ``backend`` is ``auto`` (by extension), ``torch`` or ``onnxruntime``; ``kwargs`` go to
        :meth:`from_checkpoint` / :meth:`from_onnx` (``amp``, ``num_classes`` and ``size`` only apply to PyTorch).
        """
        from utils.errors import UserError
        is_onnx = path.lower().endswith(".onnx")
        backend = backend if backend != "auto" else ("onnxruntime" if is_onnx else "torch")
        if backend == "onnxruntime":
            if not is_onnx:
                raise UserError(f"--backend onnxruntime needs an .onnx model, got {path} — export one with "
                                "python -m utils.export or use --backend torch", code=2)
            for key in ("amp", "channels_last", "compile"):
                kwargs.pop(key, None)
            return cls.from_onnx(path, **kwargs)
        if backend != "torch":
            raise UserError(f"--backend {backend!r} is not known; use auto, torch or onnxruntime", code=2)
        if is_onnx:
            raise UserError(f"{path} is an ONNX model; use --backend onnxruntime (or auto)", code=2)
        return cls.from_checkpoint(path, **kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 ``HxWx3`` frames → ``[B, 3, S, S]`` float32 (the shared preprocessing)."""
        from data.transforms import preprocess_batch
        return preprocess_batch(list(images), self.size)

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch → raw detections ``[B, C, top_k, 5]`` (relative coordinates) on ``self.device``."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            if self._raw is None:
                return self.model(x)
            loc, conf = self._raw(x)
        return self.model.detect(loc, torch.softmax(conf.float(), dim=-1), self.model.priors)

    def predict_batch(self, x: torch.Tensor, image_sizes: Sequence[Tuple[int, int]]) -> List[Detections]:
        """Preprocessed ``[B, 3, S, S]`` + original ``(h, w)`` per image → detections in pixels."""
        return detections_to_pixels(self.run(x), image_sizes, self.score_threshold)

    def predict(self, images: Sequence[np.ndarray]) -> List[Detections]:
        """RGB uint8 frames (any sizes) → detections in pixels of each frame.

        Same numbers as ``predict_batch(preprocess(images), sizes)``, but only the resize runs on the CPU: the
        batch travels to ``self.device`` as uint8 (4x fewer bytes than float32; from pinned memory, without
        blocking, on CUDA) and is converted and mean-subtracted there.
        """
        from data.transforms import normalize_uint8_batch, resize_batch_uint8
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


def open_predictor(path: str, backend: str = "auto", *, device: torch.device = torch.device("cpu"),
                   amp: bool = False, compile: bool = False, class_names: Optional[Sequence[str]] = None,
                   num_classes: Optional[int] = None, size: Optional[int] = None, top_k: int = 200,
                   conf_thresh: float = 0.01, nms_thresh: float = 0.45, score_threshold: float = 0.0) -> Predictor:
    """The one way to open a model for inference: a checkpoint (this project's or ssd.pytorch's), an exported
    ``.onnx`` or TorchScript file → :class:`Predictor`. ``class_names`` (without background) override the file's;
    ``num_classes`` / ``size``, when given, must agree with the file. Raises ``UserError`` with a one-line reason."""
    return Predictor.load(path, backend, device=device, amp=amp, compile=compile, class_names=class_names,
                          num_classes=num_classes, size=size, top_k=top_k, conf_thresh=conf_thresh,
                          nms_thresh=nms_thresh, score_threshold=score_threshold)
