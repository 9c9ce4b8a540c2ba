"""Deployment: writing exported files (ONNX / TorchScript export, with or without NMS in the graph, and the
check that an exported file computes what PyTorch does). Running them is :mod:`utils.inference.runners`."""
