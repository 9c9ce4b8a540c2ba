"""ONNX / TorchScript export: parity with PyTorch, NMS in the graph, ONNX Runtime behind the Predictor."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.deploy.export import export_onnx, export_torchscript
from utils.export import main as export_main
from utils.inference import open_predictor
from utils.inference.runners import ORT_MISSING, OnnxRunner, load_exported
from utils.loading.checkpoint import load_model
from utils.loading.exported import load_torchscript

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

NAMES = ["cat", "dog", "car", "bus", "boat"]


def image_batch(n: int, seed: int = 0) -> torch.Tensor:
    """Preprocessed-image-like input: pixel values minus the means, [n, 3, 300, 300]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 300, 300, generator=gen) * 255 - 120


def assert_same_detections(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    """Equal ``[B, C, top_k, 5]`` detections, ties aside: the score sequence of every class is the same, and the
    rows of each class are the same set (boxes with exactly equal scores may come in another order)."""
    assert got.shape == expected.shape
    torch.testing.assert_close(got[..., 0], expected[..., 0], atol=atol, rtol=0)
    for b, c in zip(*torch.nonzero(expected[..., 0].sum(-1) > 0, as_tuple=True)):
        e, g = expected[b, c], got[b, c]
        e, g = e[e[:, 0] > 0], g[g[:, 0] > 0]
        close = (e[:, None, :] - g[None, :, :]).abs().amax(-1) <= atol     # [n, n]
        assert close.any(1).all() and close.any(0).all(), f"image {b}, class {c}: different boxes"


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def assert_same_pixel_detections(got, expected) -> None:
    """Per image the same ``(label, score, box)`` rows in any order (equal scores may swap): scores within 1e-5,
    boxes within 1e-3 px (fp32 runtimes sum in different orders)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert len(g) == len(e) > 0
        rows_g = np.column_stack([g.labels, g.scores, g.boxes])
        rows_e = np.column_stack([e.labels, e.scores, e.boxes])
        tolerance = np.array([0, 1e-5, 1e-3, 1e-3, 1e-3, 1e-3])
        close = (np.abs(rows_g[:, None, :] - rows_e[None, :, :]) <= tolerance).all(-1)
        assert close.any(1).all() and close.any(0).all()


@pytest.fixture(scope="module")
def ckpt(make_checkpoint):
    return make_checkpoint(class_names=tuple(NAMES))


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt, "test")[0].eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """The tiny model exported four ways (dynamic batch; traced/exported with a batch of 1)."""
    folder = tmp_path_factory.mktemp("export")
    paths = {}
    for with_nms in (False, True):
        key = "nms" if with_nms else "raw"
        paths[f"onnx_{key}"] = str(folder / f"{key}.onnx")
        paths[f"ts_{key}"] = str(folder / f"{key}.pt")
        export_onnx(model, paths[f"onnx_{key}"], NAMES, with_nms=with_nms)
        export_torchscript(model, paths[f"ts_{key}"], NAMES, with_nms=with_nms)
    return paths


def run_ort(path: str, x: torch.Tensor):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()})]


def test_onnx_raw_outputs_match_pytorch_at_a_batch_size_other_than_exported(model, exported):
    x = image_batch(2)
    loc, scores, priors = run_ort(exported["onnx_raw"], x)
    with torch.no_grad():
        ref_loc, ref_conf = model.forward_raw(x)
    assert loc.shape == (2, model.priors.shape[0], 4) and scores.shape == (2, model.priors.shape[0], 6)
    assert relative_error(loc, ref_loc) < 1e-4
    assert relative_error(scores, torch.softmax(ref_conf, -1)) < 1e-4
    torch.testing.assert_close(priors, model.priors)


def test_onnx_files_declare_a_dynamic_batch_and_carry_class_names(exported):
    proto = onnx.load(exported["onnx_nms"])
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["size"] == "300" and props["with_nms"] == "1"
    runner = OnnxRunner(exported["onnx_nms"])
    assert runner.class_names == NAMES and runner.size == 300 and runner.with_nms


def test_onnx_with_nms_graph_uses_onnx_nonmaxsuppression(exported):
    ops = {node.op_type for node in onnx.load(exported["onnx_nms"]).graph.node}
    assert "NonMaxSuppression" in ops
    assert not ({"Loop", "If"} & ops)


def test_onnx_with_nms_equals_pytorch_detect(model, exported):
    x = image_batch(2, seed=1)
    (detections,) = run_ort(exported["onnx_nms"], x)
    with torch.no_grad():
        expected = model(x)
    assert (expected[..., 0] > 0).sum() > 100  # the comparison is about real detections
    assert_same_detections(detections, expected)


def test_onnx_with_nms_returns_zeros_when_no_score_passes_the_threshold(ckpt, tmp_path):
    model = load_model(ckpt, "test", conf_thresh=0.999)[0].eval()
    path = str(tmp_path / "strict.onnx")
    export_onnx(model, path, NAMES, with_nms=True)
    x = image_batch(2)
    (detections,) = run_ort(path, x)
    with torch.no_grad():
        expected = model(x)
    assert expected.abs().sum() == 0
    assert detections.shape == expected.shape and detections.abs().sum() == 0


def test_torchscript_exports_match_pytorch_after_plain_jit_load(model, exported):
    x = image_batch(2, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        raw = torch.jit.load(exported["ts_raw"])
        with_nms = torch.jit.load(exported["ts_nms"])
    with torch.no_grad():
        loc, scores, priors = raw(x)
        detections = with_nms(x)
        ref_loc, ref_conf = model.forward_raw(x)
        expected = model(x)
    assert relative_error(loc, ref_loc) < 1e-4
    assert relative_error(scores, torch.softmax(ref_conf, -1)) < 1e-4
    torch.testing.assert_close(priors, model.priors)
    assert (expected[..., 0] > 0).sum() > 100
    assert_same_detections(detections, expected)


def test_runner_on_raw_onnx_applies_detect_like_pytorch(model, exported):
    x = image_batch(2, seed=3)
    with torch.no_grad():
        expected = model(x)
    for key in ("onnx_raw", "ts_raw", "ts_nms"):
        assert_same_detections(load_exported(exported[key])(x), expected)


def test_nms_file_with_stricter_threshold_and_smaller_top_k_equals_detect_with_them(model, exported):
    from layers.detection import Detect
    x = image_batch(2, seed=6)
    with torch.no_grad():
        loc, conf = model.forward_raw(x)
        expected = Detect(6, 0, top_k=20, conf_thresh=0.3, nms_thresh=0.45)(loc, torch.softmax(conf, -1),
                                                                          model.priors)
    assert (expected[..., 0] > 0).sum() > 10
    assert_same_detections(OnnxRunner(exported["onnx_nms"], top_k=20, conf_thresh=0.3)(x), expected)


def test_static_batch_export_runs_other_batch_sizes_in_chunks(model, tmp_path):
    path = str(tmp_path / "b2.onnx")
    export_onnx(model, path, NAMES, with_nms=True, batch=2)
    runner = OnnxRunner(path)
    assert runner.session.get_inputs()[0].shape == [2, 3, 300, 300]
    x = image_batch(3, seed=4)
    with torch.no_grad():
        expected = model(x)
    assert_same_detections(runner(x), expected)


@pytest.mark.parametrize("key", ["onnx_raw", "onnx_nms", "ts_raw", "ts_nms"])
def test_open_predictor_gives_a_checkpoints_detections_for_its_exports(ckpt, exported, key):
    x, sizes = image_batch(2, seed=5), [(240, 320), (300, 300)]
    expected = open_predictor(ckpt).predict_batch(x, sizes)
    predictor = open_predictor(exported[key])                  # by extension (.onnx) or content (TorchScript)
    assert predictor.class_names == NAMES and predictor.size == 300
    assert_same_pixel_detections(predictor.predict_batch(x, sizes), expected)


def test_torchscript_export_is_recognised_by_content_whatever_its_name(ckpt, exported, tmp_path):
    renamed = tmp_path / "exported_model.pth"
    renamed.write_bytes(open(exported["ts_nms"], "rb").read())
    x, sizes = image_batch(1, seed=7), [(300, 300)]
    for backend in ("auto", "torch", "torchscript"):
        predictor = open_predictor(str(renamed), backend)
        assert predictor.class_names == NAMES
        assert_same_pixel_detections(predictor.predict_batch(x, sizes), open_predictor(ckpt).predict_batch(x, sizes))
    with pytest.raises(UserError, match="needs an .onnx model"):
        open_predictor(str(renamed), "onnxruntime")
    with pytest.raises(UserError, match="cannot load .* as TorchScript"):
        open_predictor(ckpt, "torchscript")


def test_exports_accept_the_checkpoint_options_and_refuse_other_sizes_or_class_counts(ckpt, tmp_path, capsys):
    path = str(tmp_path / "tiny.onnx")
    assert export_main([ckpt, "--format", "onnx", "-o", path, "--with-nms"]) == 0
    assert "check: max relative difference" in capsys.readouterr().out
    # the keyword arguments eval.py / object_detection.py give a checkpoint are accepted as well
    predictor = open_predictor(path, device=torch.device("cpu"), amp=True, compile=True, size=300, top_k=200,
                               conf_thresh=0.01, num_classes=6)
    assert predictor.class_names == NAMES and predictor.device == torch.device("cpu") and not predictor.amp
    with pytest.raises(UserError, match="SSD300 export") as err:
        open_predictor(path, size=512)
    assert err.value.code == 2
    with pytest.raises(UserError, match="has 6 classes, but 21 were asked for"):
        open_predictor(path, num_classes=21)


def test_class_name_count_mismatch_is_the_same_usage_error_for_every_file_kind(ckpt, exported, tmp_path):
    for path in (ckpt, exported["onnx_raw"], exported["ts_nms"]):
        with pytest.raises(UserError) as err:
            open_predictor(path, class_names=["only", "two"])
        assert (err.value.message, err.value.code) == (f"2 class names given for a model with 5 classes ({path})", 2)
    names = tmp_path / "names.txt"
    names.write_text("only\ntwo\n")
    with pytest.raises(UserError) as err:
        export_main([ckpt, "-o", str(tmp_path / "x.onnx"), "--class-names", str(names)])
    assert (err.value.message, err.value.code) == (f"2 class names given for a model with 5 classes ({names})", 2)
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnxruntime_is_one_clear_error(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(UserError) as err:
        open_predictor(exported["onnx_raw"])
    assert err.value.message == "onnxruntime is not installed: pip install onnxruntime" == ORT_MISSING


def test_nms_file_refuses_other_thresholds_and_foreign_onnx_files(exported, tmp_path):
    for settings in ({"conf_thresh": 0.001}, {"top_k": 300}, {"nms_thresh": 0.5}):
        with pytest.raises(UserError, match="NMS built in"):
            OnnxRunner(exported["onnx_nms"], **settings)
    proto = onnx.load(exported["onnx_raw"])
    del proto.metadata_props[:]
    foreign = str(tmp_path / "foreign.onnx")
    onnx.save(proto, foreign)
    with pytest.raises(UserError, match="not exported by utils.export"):
        OnnxRunner(foreign)
    with pytest.raises(UserError, match="not found"):
        OnnxRunner(str(tmp_path / "missing.onnx"))


def test_export_cli_reports_bad_input_without_traceback(ckpt, tmp_path):
    with pytest.raises(UserError, match="--batch must be") as exc:
        export_main([ckpt, "-o", str(tmp_path / "x.onnx"), "--batch", "zero"])
    assert exc.value.code == 2
    with pytest.raises(UserError, match="SSD300"):
        export_main([ckpt, "-o", str(tmp_path / "x.onnx"), "--size", "512"])
    with pytest.raises(UserError, match="opset"):
        export_main([ckpt, "-o", str(tmp_path / "x.onnx"), "--opset", "9"])
    assert not (tmp_path / "x.onnx").exists()


def test_cli_writes_a_loadable_torchscript_file_and_reports_errors_on_one_line(ckpt, tmp_path, capsys):
    from utils.errors import run_cli
    path = str(tmp_path / "tiny.pt")
    assert export_main([ckpt, "--format", "torchscript", "-o", path, "--batch", "1", "--with-nms"]) == 0
    module, meta = load_torchscript(path)
    assert meta["class_names"] == NAMES and meta["with_nms"] and meta["batch"] == 1
    with pytest.raises(SystemExit) as exit_info:
        run_cli(export_main, [str(tmp_path / "missing.pth"), "-o", str(tmp_path / "y.onnx")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model file not found") and "Traceback" not in err and err.count("\n") == 1


def test_object_detection_runs_an_exported_onnx_model_like_its_checkpoint(ckpt, exported, tmp_path):
    import json

    import cv2

    import object_detection
    onnx_path = exported["onnx_nms"]
    image = str(tmp_path / "frame.png")
    cv2.imwrite(image, (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8))
    found = {}
    for name, path in (("onnx", onnx_path), ("pth", ckpt)):
        report = str(tmp_path / f"{name}.json")
        assert object_detection.main([path, image, "-o", str(tmp_path / f"{name}.png"), "--json", report,
                                      "--threshold", "0.3", "--no-progress", "--device", "cpu"]) == 0
        with open(report) as fh:
            found[name] = sorted((d["class"], d["score"]) for d in json.load(fh)["frames"][0]["detections"])
    assert len(found["onnx"]) == len(found["pth"]) > 0
    assert [c for c, _ in found["onnx"]] == [c for c, _ in found["pth"]]
    # the report rounds scores to 4 decimals; fp32 differences can move the last one
    np.testing.assert_allclose([s for _, s in found["onnx"]], [s for _, s in found["pth"]], atol=2e-4)


def test_the_cpu_demo_architecture_exports_to_onnx_like_pytorch(make_checkpoint, tmp_path):
    # width + BatchNorm + the s2 stem (7x7 stride-2 conv1_1, nn.Identity as pool1): what the quickstart trains
    model = load_model(make_checkpoint(batch_norm=True, stem="s2", class_names=tuple(NAMES)), "test")[0].eval()
    path = str(tmp_path / "s2.onnx")
    export_onnx(model, path, NAMES, with_nms=False)
    x = image_batch(1, seed=3)
    loc, scores, _ = run_ort(path, x)
    with torch.no_grad():
        ref_loc, ref_conf = model.forward_raw(x)
    assert relative_error(loc, ref_loc) < 1e-4
    assert relative_error(scores, torch.softmax(ref_conf, -1)) < 1e-4


def test_cli_int8_export_writes_a_calibrated_file_that_runs_as_int8(ckpt, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "m_int8.onnx"
    assert export_main([ckpt, "-o", str(out), "--int8", "--calib", str(tiny_dataset), "--calib_images", "3"]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out} (onnx int8, calibrated on 3 images of {tiny_dataset}, SSD300, 6 classes" in stdout
    # quantization moves outputs by design: the comparison is informational and points at eval.py's mAP
    assert "check (int8, informational)" in stdout and "python eval.py --trained_model" in stdout
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["precision"] == "int8" and '"calib_images": 3' in props["quantization"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_int8.onnx"]  # the fp32 intermediate is gone
    pred = open_predictor(str(out), precision="int8")
    assert pred.model.precision == "int8" and pred.class_names == NAMES
    x = image_batch(1)
    ref = open_predictor(ckpt).run(x)
    got = pred.run(x)
    best_ref, best_got = ref[:, 1:, 0, 0], got[:, 1:, 0, 0]
    assert float((best_ref - best_got).abs().max() / best_ref.abs().max()) <= 0.10  # cpu_backend_helpers' int8


@pytest.mark.parametrize("flags, message", [
    (["--int8"], "--int8 needs --calib DATASET_DIR"),
    (["--int8", "--calib", "DATA", "--format", "torchscript"], "--int8 writes an ONNX file"),
    (["--calib", "DATA"], "--calib is for --int8 exports; add --int8"),
    (["--int8", "--calib", "DATA", "--calib_images", "0"], "--calib_images must be at least 1, got 0"),
])
def test_cli_int8_flag_errors_are_usage_errors_before_any_work(ckpt, tmp_path, flags, message):
    with pytest.raises(UserError) as err:
        export_main([ckpt, "-o", str(tmp_path / "x.onnx")] + flags)
    assert message in err.value.message and err.value.code == 2
    assert list(tmp_path.iterdir()) == []


def test_cli_int8_with_a_missing_calibration_folder_writes_nothing(ckpt, tmp_path):
    with pytest.raises(UserError, match="--calib folder not found"):
        export_main([ckpt, "-o", str(tmp_path / "x.onnx"), "--int8", "--calib", str(tmp_path / "none")])
    assert list(tmp_path.iterdir()) == []
