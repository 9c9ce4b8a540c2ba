"""The shared inference path: detections in pixels, Predictor plumbing, device/atomic-write helpers."""
import os

import numpy as np
import pytest
import torch

from data.voc0712 import VOC_CLASSES
from ssd import build_ssd
from utils.device import resolve_device
from utils.errors import UserError
from utils.inference import Predictor, detections_to_pixels, open_predictor
from utils.loading.checkpoint import load_model
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


def test_open_predictor_keeps_the_checkpoints_class_names_and_gives_the_models_detections(make_checkpoint):
    path = make_checkpoint(class_names=("a", "b", "c"))
    pred = open_predictor(path)
    assert pred.class_names == ["a", "b", "c"] and pred.num_classes == 4 and pred.size == 300
    net, _ = load_model(path, "test")
    net.eval().to(memory_format=torch.channels_last)  # as the Predictor runs it
    x = torch.randn(2, 3, 300, 300, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        ref = net(x.contiguous(memory_format=torch.channels_last))
    got = pred.predict_batch(x, [(300, 300), (150, 600)])
    ref_rows = ref[0][ref[0, :, :, 0] > 0]
    assert len(got[0]) == ref_rows.shape[0] > 0
    np.testing.assert_allclose(np.sort(got[0].scores), np.sort(ref_rows[:, 0].numpy()), rtol=1e-5)


def test_open_predictor_names_files_without_names_by_class_count(make_checkpoint):
    assert open_predictor(make_checkpoint(bare=True)).class_names == ["class_1", "class_2", "class_3", "class_4",
                                                                      "class_5"]
    assert open_predictor(make_checkpoint(class_names=tuple(f"n{i}" for i in range(20)), bare=True)).class_names \
        == list(VOC_CLASSES)
    assert open_predictor(make_checkpoint(), class_names=list("vwxyz")).class_names == list("vwxyz")


def test_class_name_count_mismatch_is_one_usage_error(make_checkpoint):
    path = make_checkpoint(class_names=("a", "b", "c"), bare=True)
    with pytest.raises(UserError) as err:
        open_predictor(path, class_names=["only", "two"])
    assert err.value.message == f"2 class names given for a model with 3 classes ({path})"
    assert err.value.code == 2


def test_unknown_backend_and_onnx_on_torch_are_usage_errors(make_checkpoint):
    with pytest.raises(UserError, match="--backend 'tensorrt' is not known") as err:
        open_predictor(make_checkpoint(), "tensorrt")
    assert err.value.code == 2
    with pytest.raises(UserError, match="use --backend onnxruntime") as err:
        open_predictor("model.onnx", "torch")
    with pytest.raises(UserError, match="needs an .onnx model") as err:
        open_predictor(make_checkpoint(), "onnxruntime")
    assert err.value.code == 2


def test_ssd_postprocess_is_the_test_phase_forward():
    torch.manual_seed(0)
    net = build_ssd("test", 300, 3, width=0.125).eval()
    x = torch.randn(1, 3, 300, 300) * 50
    with torch.no_grad():
        loc, conf = net.forward_raw(x)
        _, scores, priors = net.detect_inputs(loc, conf)
        expected = net(x)
    assert scores.dtype == torch.float32 and priors is net.priors
    torch.testing.assert_close(scores.sum(-1), torch.ones(1, priors.shape[0]))
    assert (expected[..., 0] > 0).sum() > 0
    assert torch.equal(net.postprocess(loc, conf), expected)


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
    compiled = Predictor(net, ["a", "b"], 300, channels_last=True, compile=True)
    assert (eager[..., 0] > 0).sum() > 0
    torch.testing.assert_close(compiled.run(x), eager, rtol=1e-4, atol=1e-4)
    # the network alone, as the benchmark times it: the compiled graph's logits are the eager ones
    torch.testing.assert_close(compiled.forward_raw(x), net.forward_raw(x), rtol=1e-4, atol=1e-3)
