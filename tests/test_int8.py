"""Calibrated int8 (utils.deploy.quantize): ONNX Runtime runs the QDQ file close to fp32 PyTorch (raw and
--with-nms), the export metadata survives, calibration uses the shared pre-processing, the layers kept in fp32 are
really left alone, and bad inputs are one-line errors. Tolerances and why: tests/cpu_backend_helpers.py."""
import json

import numpy as np
import pytest
import torch

from cpu_backend_helpers import (INT8_MEAN_TOLERANCE, TOLERANCE, build_files, dataset_images, reference, rel_max,
                                 rel_mean, top1_scores)
from utils.errors import UserError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def setup(make_checkpoint, tiny_dataset, tmp_path_factory):
    ckpt = make_checkpoint()
    files = build_files(tmp_path_factory.mktemp("int8"), ckpt, str(tiny_dataset))
    images = dataset_images(str(tiny_dataset), 2)
    raw, detections = reference(ckpt, images)
    return {"ckpt": ckpt, "files": files, "images": images, "raw": raw, "detections": detections,
            "data": str(tiny_dataset)}


def _props(path):
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_onnxruntime_int8_raw_outputs_are_close_to_pytorch(setup):
    from utils.inference.runners import OnnxRunner

    loc, scores, priors = OnnxRunner(setup["files"]["raw_int8"]).outputs(setup["images"])
    ref_loc, ref_scores, ref_priors = setup["raw"]
    assert torch.equal(priors, ref_priors)
    assert rel_max(ref_loc, loc) <= TOLERANCE["int8"] and rel_max(ref_scores, scores) <= TOLERANCE["int8"]
    assert rel_mean(ref_loc, loc) <= INT8_MEAN_TOLERANCE and rel_mean(ref_scores, scores) <= INT8_MEAN_TOLERANCE
    assert rel_max(ref_scores, scores) > 0  # it really is quantized


def test_onnxruntime_int8_with_nms_keeps_each_classes_best_detection(setup):
    from utils.inference.runners import OnnxRunner

    got = OnnxRunner(setup["files"]["nms_int8"])(setup["images"])
    assert got.shape == setup["detections"].shape
    assert rel_max(top1_scores(setup["detections"]), top1_scores(got)) <= TOLERANCE["int8"]


def test_int8_file_keeps_the_export_metadata_and_says_how_it_was_made(setup):
    from utils.loading.exported import parse_metadata

    for kind in ("raw", "nms"):
        fp32, int8 = _props(setup["files"][kind]), _props(setup["files"][f"{kind}_int8"])
        assert parse_metadata(int8, "x") == parse_metadata(fp32, "x")
        assert {k: v for k, v in int8.items() if k not in ("precision", "quantization")} == fp32
        assert int8["precision"] == "int8"
        settings = json.loads(int8["quantization"])
        assert settings["calib_images"] == 4 and settings["keep_fp32"] == ["first"]
        assert settings["weights"] == "int8 symmetric per-channel"


def test_only_convolutions_are_quantized_and_the_first_stays_fp32(setup):
    from utils.deploy.quantize import conv_groups

    proto = onnx.load(setup["files"]["nms_int8"])
    groups = conv_groups(onnx.load(setup["files"]["nms"]))
    assert len(groups["first"]) == 1 and len(groups["loc"]) == len(groups["conf"]) == 6
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    quantized = {n.name for n in proto.graph.node if n.op_type == "Conv"
                 and produced_by.get(n.input[1]) is not None and produced_by[n.input[1]].op_type == "DequantizeLinear"}
    assert groups["first"][0] not in quantized
    assert set(groups["body"] + groups["loc"] + groups["conf"]) <= quantized
    # NMS, decoding and softmax consume no dequantized tensors except through a Conv
    q_ops = {n.op_type for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert q_ops == {"QuantizeLinear", "DequantizeLinear"}
    for node in proto.graph.node:
        if node.op_type in ("NonMaxSuppression", "Softmax", "TopK"):
            assert all(produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in node.input)


def test_keep_fp32_heads_leaves_them_unquantized_and_no_less_accurate(setup, tmp_path):
    from utils.deploy.quantize import conv_groups, int8_error, quantize_onnx

    out = str(tmp_path / "heads_fp32.onnx")
    quantize_onnx(setup["files"]["raw"], out, setup["data"], num_images=4, keep_fp32=("first", "loc", "conf"))
    proto = onnx.load(out)
    heads = set(sum((conv_groups(proto)[g] for g in ("loc", "conf")), []))
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(produced_by.get(n.input[1]) != "DequantizeLinear" for n in proto.graph.node if n.name in heads)
    images = setup["images"].numpy()
    all_heads = int8_error(setup["files"]["raw"], setup["files"]["raw_int8"], images)
    fp32_heads = int8_error(setup["files"]["raw"], out, images)
    assert fp32_heads["scores_mean"] <= all_heads["scores_mean"] * 1.1


def test_calibration_batches_are_the_shared_preprocessing_of_dataset_images(setup):
    from data.transforms import preprocess_batch
    from utils.deploy.quantize import calibration_batches, open_calibration_dataset

    dataset = open_calibration_dataset(setup["data"])
    assert dataset.split == "trainval"
    batches = list(calibration_batches(dataset, 3, 300, batch=2))
    assert [b.shape for b in batches] == [(2, 3, 300, 300), (2, 3, 300, 300)]
    picks = np.linspace(0, len(dataset) - 1, 3).round().astype(int)
    expected = preprocess_batch([dataset.pull_image(int(i)) for i in picks], 300).numpy()
    np.testing.assert_array_equal(np.concatenate(batches)[:3], expected)
    np.testing.assert_array_equal(batches[1][1], batches[1][0])  # padded with the last image


@pytest.mark.parametrize("make_dir, message", [
    (lambda tmp: str(tmp / "missing"), "--calib folder not found"),
    (lambda tmp: str(tmp), "has no labels.txt"),
])
def test_bad_calibration_folder_is_a_one_line_error(setup, tmp_path, make_dir, message):
    from utils.deploy.quantize import quantize_onnx

    with pytest.raises(UserError, match=message):
        quantize_onnx(setup["files"]["raw"], str(tmp_path / "o.onnx"), make_dir(tmp_path), 2)
    assert not (tmp_path / "o.onnx").exists()


def test_bad_settings_are_refused_before_any_work(setup, tmp_path):
    from utils.deploy.quantize import quantize_onnx

    out = str(tmp_path / "o.onnx")
    with pytest.raises(UserError, match="already quantized"):
        quantize_onnx(setup["files"]["raw_int8"], out, setup["data"], 2)
    with pytest.raises(UserError, match="unknown layer group"):
        quantize_onnx(setup["files"]["raw"], out, setup["data"], 2, keep_fp32=("head",))
    with pytest.raises(UserError, match="unknown calibration method"):
        quantize_onnx(setup["files"]["raw"], out, setup["data"], 2, method="kl")
    with pytest.raises(UserError, match="--calib_images must be positive"):
        quantize_onnx(setup["files"]["raw"], out, setup["data"], 0)


def test_sensitivity_reports_one_error_per_keep_choice(setup, tmp_path):
    from utils.deploy.quantize import keep_fp32_sensitivity

    result = keep_fp32_sensitivity(setup["files"]["raw"], setup["data"], setup["images"].numpy(), str(tmp_path),
                                   num_images=2, choices=((), ("first", "loc", "conf")))
    assert set(result) == {"none", "first+loc+conf"}
    assert all(0 < r["scores_max"] <= TOLERANCE["int8"] for r in result.values())


def test_export_int8_writes_only_the_quantized_file(setup, tmp_path):
    from utils.deploy.quantize import export_int8
    from utils.loading.checkpoint import load_model

    model, meta = load_model(setup["ckpt"], "test")
    out = tmp_path / "m_int8.onnx"
    written = export_int8(model, str(out), meta["class_names"], setup["data"], num_images=2, with_nms=True)
    assert written["precision"] == "int8" and written["with_nms"] == "1"
    assert _props(str(out)) == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_int8.onnx"]  # no fp32 or temporary file left
