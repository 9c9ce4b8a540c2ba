"""The shared inference path: detections in pixels, Predictor plumbing, device/atomic-write helpers."""
import os

import numpy as np
import pytest
import torch

from ssd import build_ssd
from utils.loading.checkpoint import save_checkpoint
from utils.device import resolve_device
from utils.errors import UserError
from utils.inference.predictor import Predictor, detections_to_pixels
from utils.io import atomic_write


def test_detections_to_pixels_scales_per_image_and_drops_low_scores():
    out = torch.zeros(2, 3, 4, 5)
    out[0, 1, 0] = torch.tensor([0.9, 0.1, 0.2, 0.5, 0.6])
    out[0, 2, 0] = torch.tensor([0.3, 0.0, 0.0, 1.0, 1.0])
    out[1, 1, 0] = torch.tensor([0.8, -0.1, 0.5, 1.2, 0.75])   # outside the image: clipped
    dets = detections_to_pixels(out, [(100, 200), (40, 80)], score_threshold=0.5)
    assert len(dets[0]) == 1 and len(dets[1]) == 1
    np.testing.assert_allclose(dets[0].boxes[0], [20, 20, 100, 60], rtol=1e-6)
    assert dets[0].labels.tolist() == [1]
    np.testing.assert_allclose(dets[1].boxes[0], [0, 20, 80, 30], rtol=1e-6)
    assert dets[1].scores.dtype == np.float32


def test_detections_to_pixels_empty_batch_member():
    out = torch.zeros(2, 3, 4, 5)
    out[1, 2, 0] = torch.tensor([0.7, 0.1, 0.1, 0.2, 0.2])
    dets = detections_to_pixels(out, [(10, 10), (10, 10)])
    assert len(dets[0]) == 0 and dets[0].boxes.shape == (0, 4)
    assert dets[1].labels.tolist() == [2]


def test_predictor_from_checkpoint_keeps_class_names_and_matches_model(tmp_path):
    torch.manual_seed(0)
    net = build_ssd("test", 300, 4, width=0.125).eval()
    path = str(tmp_path / "m.pth")
    save_checkpoint({"model": net.state_dict(), "class_names": ["a", "b", "c"], "config": {}}, path)
    pred = Predictor.from_checkpoint(path, channels_last=False)
    assert pred.class_names == ["a", "b", "c"] and pred.num_classes == 4 and pred.size == 300
    x = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        ref = net(x)
    got = pred.predict_batch(x, [(300, 300), (150, 600)])
    ref_rows = ref[0][ref[0, :, :, 0] > 0]
    assert len(got[0]) == ref_rows.shape[0]
    np.testing.assert_allclose(np.sort(got[0].scores), np.sort(ref_rows[:, 0].numpy()), rtol=1e-5)


def test_predictor_class_name_count_mismatch_is_a_user_error(tmp_path):
    net = build_ssd("test", 300, 4, width=0.125)
    path = str(tmp_path / "m.pth")
    torch.save(net.state_dict(), path)
    with pytest.raises(UserError, match="3 classes"):
        Predictor.from_checkpoint(path, class_names=["only", "two"])


def test_resolve_device_rejects_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(UserError):
        resolve_device("tpu")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(target)) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
    with atomic_write(str(target)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"new")
    assert target.read_bytes() == b"new"


def test_compiled_predictor_gives_the_same_detections_as_eager():
    torch.manual_seed(0)
    net = build_ssd("test", 300, 3, width=0.125).eval()
    x = torch.randn(2, 3, 300, 300) * 50
    eager = Predictor(net, ["a", "b"], 300, channels_last=True).run(x).clone()
    compiled = Predictor(net, ["a", "b"], 300, channels_last=True, compile=True).run(x)
    assert (eager[..., 0] > 0).sum() > 0
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
