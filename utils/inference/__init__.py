"""Inference: frames → tensors → network → detections in pixels (:class:`Predictor`), opening a model file
(:func:`open_predictor`) and running exported files (:mod:`utils.inference.runners`)."""
from utils.inference.opener import open_predictor
from utils.inference.predictor import Detections, Predictor, detections_to_pixels

__all__ = ["Detections", "Predictor", "detections_to_pixels", "open_predictor"]
