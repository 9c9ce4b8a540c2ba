"""Inference: frames → tensors → network → detections in pixels (:class:`Predictor`), and opening a model."""
from utils.inference.predictor import Detections, Predictor, detections_to_pixels, open_predictor

__all__ = ["Detections", "Predictor", "detections_to_pixels", "open_predictor"]
