"""ssd.pytorch's import path for the augmentations: the implementation lives in :mod:`data.transforms`."""
from data.transforms import (BaseTransform, SSDAugmentation, normalize_uint8_batch, preprocess, preprocess_batch,
                             resize_batch_uint8)

__all__ = ["BaseTransform", "SSDAugmentation", "normalize_uint8_batch", "preprocess", "preprocess_batch",
           "resize_batch_uint8"]
