"""Deployment: ONNX / TorchScript export and the runners that execute exported files."""
