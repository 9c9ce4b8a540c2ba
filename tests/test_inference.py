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


# --------------------------------------------------------------------------------------------------------------
# backend × precision through open_predictor (issue 19): outputs against fp32 PyTorch within the precision's
# tolerance (tests/cpu_backend_helpers.py says why each), and every refused combination is one usage error
# --------------------------------------------------------------------------------------------------------------

def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _openvino_bf16() -> bool:
    if not _has("openvino"):
        return False
    import openvino
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


needs_ort = pytest.mark.skipif(not (_has("onnxruntime") and _has("onnx")), reason="onnxruntime/onnx not installed")
needs_ov = pytest.mark.skipif(not (_has("openvino") and _has("onnx") and _has("onnxruntime")),
                              reason="openvino not installed")


@pytest.fixture(scope="module")
def backend_files(make_checkpoint, tiny_dataset, tmp_path_factory):
    """The tiny checkpoint, its raw fp32 ONNX export and the int8 version (4 calibration images), and 2 dataset
    images with fp32 PyTorch's detections on them."""
    from cpu_backend_helpers import dataset_images, reference

    ckpt = make_checkpoint()
    images = dataset_images(str(tiny_dataset), 2)
    files = {"checkpoint": ckpt, "images": images, "reference": reference(ckpt, images)[1]}
    if _has("onnx") and _has("onnxruntime"):
        from utils.deploy.export import export_onnx
        from utils.deploy.quantize import quantize_onnx

        folder = tmp_path_factory.mktemp("backends")
        model, meta = load_model(ckpt, "test")
        files["fp32"], files["int8"] = str(folder / "m.onnx"), str(folder / "m_int8.onnx")
        export_onnx(model, files["fp32"], meta["class_names"])
        quantize_onnx(files["fp32"], files["int8"], str(tiny_dataset), num_images=4)
    return files


MATRIX = [
    ("torch", "fp32", "checkpoint"),
    ("torch", "bf16", "checkpoint"),
    pytest.param("onnxruntime", "fp32", "fp32", marks=needs_ort),
    pytest.param("onnxruntime", "int8", "int8", marks=needs_ort),
    pytest.param("openvino", "fp32", "fp32", marks=needs_ov),
    pytest.param("openvino", "bf16", "fp32", marks=[needs_ov, pytest.mark.skipif(
        not _openvino_bf16(), reason="OpenVINO reports no bf16 on this CPU")]),
    pytest.param("openvino", "int8", "int8", marks=needs_ov),
]


@pytest.mark.filterwarnings("ignore:--precision")  # "no native bf16/int8 instructions" on older CPUs
@pytest.mark.parametrize("backend, precision, file", MATRIX)
def test_every_backend_and_precision_gives_fp32_pytorchs_detections_within_its_tolerance(backend_files, backend,
                                                                                         precision, file):
    from cpu_backend_helpers import TOLERANCE, rel_max, top1_scores

    pred = open_predictor(backend_files[file], backend, precision=precision, threads=1)
    ref = backend_files["reference"]
    got = pred.run(backend_files["images"]).float()
    assert got.shape == ref.shape and torch.all(got[:, 0] == 0)
    if precision == "fp32":
        assert rel_max(ref[..., 0], got[..., 0]) <= TOLERANCE["fp32"]  # every score, in order
    else:
        # reduced precision: each class's best detection (a maximum, robust to near-tie reordering)
        assert 0 < rel_max(top1_scores(ref), top1_scores(got)) <= TOLERANCE[precision]
    assert pred.class_names == open_predictor(backend_files["checkpoint"]).class_names


def test_precision_bf16_on_torch_is_amp(backend_files):
    assert open_predictor(backend_files["checkpoint"], precision="bf16").amp
    assert open_predictor(backend_files["checkpoint"], amp=True, precision="bf16").amp
    assert not open_predictor(backend_files["checkpoint"], precision="fp32").amp


@needs_ort
def test_without_precision_a_file_runs_as_what_it_is(backend_files):
    assert open_predictor(backend_files["int8"]).model.precision == "int8"
    assert open_predictor(backend_files["fp32"]).model.precision == "fp32"


@needs_ov
def test_amp_means_bf16_on_openvino(backend_files):
    if not _openvino_bf16():
        pytest.skip("OpenVINO reports no bf16 on this CPU")
    assert open_predictor(backend_files["fp32"], "openvino", amp=True).model.precision == "bf16"


def test_threads_reach_each_runtime(backend_files):
    before = torch.get_num_threads()
    try:
        open_predictor(backend_files["checkpoint"], threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    if "fp32" in backend_files:
        session = open_predictor(backend_files["fp32"], threads=1).model.session
        assert session.get_session_options().intra_op_num_threads == 1
    if _has("openvino") and "fp32" in backend_files:
        pred = open_predictor(backend_files["fp32"], "openvino", threads=1)
        pred.run(backend_files["images"][:1])
        assert pred.model.describe()["threads"] == 1


REFUSALS = [
    ("checkpoint", "torch", {"precision": "int8"},
     "--precision int8 runs a calibrated int8 export, not a checkpoint: write one with python -m utils.export MODEL "
     "--int8 --calib DATASET_DIR -o m_int8.onnx, then use it with --backend onnxruntime or openvino"),
    ("checkpoint", "auto", {"precision": "fp32", "amp": True},
     "--amp means bf16 autocast and contradicts --precision fp32; drop --amp or use --precision bf16"),
    ("checkpoint", "auto", {"precision": "int8", "amp": True}, "--amp means bf16 autocast and contradicts"),
    ("checkpoint", "auto", {"precision": "fp16"}, "--precision 'fp16' is not known; use one of fp32, bf16, int8"),
    ("checkpoint", "auto", {"threads": 0}, "--threads must be at least 1, got 0"),
    ("checkpoint", "openvino", {}, "--backend openvino needs an exported .onnx (or OpenVINO .xml) model"),
    pytest.param("fp32", "onnxruntime", {"precision": "bf16"},
                 "ONNX Runtime has no bf16 path on CPUs: use --backend openvino --precision bf16", marks=needs_ort),
    pytest.param("fp32", "auto", {"precision": "int8"}, "is not quantized: --precision int8 needs an int8 file",
                 marks=needs_ort),
    pytest.param("int8", "auto", {"precision": "fp32"}, "is an int8 (quantized) file: use --precision int8 with it",
                 marks=needs_ort),
    pytest.param("fp32", "torch", {}, "is an ONNX model; use --backend onnxruntime or openvino", marks=needs_ort),
    pytest.param("int8", "openvino", {"amp": True}, "or the fp32 export for --precision bf16 (or --amp)",
                 marks=needs_ov),
]


@pytest.mark.parametrize("file, backend, kwargs, message", REFUSALS)
def test_unavailable_combinations_are_one_line_usage_errors(backend_files, file, backend, kwargs, message):
    with pytest.raises(UserError) as err:
        open_predictor(backend_files[file], backend, **kwargs)
    assert message in err.value.message and err.value.code == 2
    assert "\n" not in err.value.message


def test_xml_files_open_on_openvino_and_not_on_torch():
    from utils.inference.opener import model_kind

    assert model_kind("m.xml") == "openvino" and model_kind("m.onnx") == "onnx"
    assert model_kind("m.onnx", "openvino") == "openvino"
    with pytest.raises(UserError, match="is an OpenVINO model; use --backend openvino"):
        model_kind("m.xml", "torch")
    with pytest.raises(UserError, match="--backend onnxruntime needs an .onnx model"):
        model_kind("m.xml", "onnxruntime")


# --------------------------------------------------------------------------------------------------------------
# the CLI flags (utils.cli.add_inference_flags) through eval.py: one line, exit 2, before the evaluation
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--amp", "--precision", "int8"], "--amp means bf16 autocast and contradicts --precision int8"),
    (["--precision", "int8"], "--precision int8 runs a calibrated int8 export, not a checkpoint"),
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--backend", "openvino"], "--backend openvino needs an exported .onnx"),
    (["--backend", "tensorrt"], "argument --backend: invalid choice: 'tensorrt'"),
])
def test_eval_inference_flag_errors_are_one_line_usage_errors(backend_files, tiny_dataset, tmp_path, capsys,
                                                              flags, message):
    import eval as eval_cli
    from utils.errors import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(eval_cli.main, ["--trained_model", backend_files["checkpoint"], "--dataset", "custom",
                                "--dataset_root", str(tiny_dataset), "--save_folder", str(tmp_path / "ev"),
                                "--device", "cpu", "--no-progress"] + flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_precisions_this_cpu_lacks_run_with_a_one_line_warning(backend_files, monkeypatch):
    """PyTorch emulates bf16 and ONNX Runtime runs int8 without VNNI: both work, slowly, and say why (OpenVINO's
    bf16, which would silently run fp32, is refused instead: test_openvino.py)."""
    import utils.inference.opener as opener
    import utils.inference.runners as runners

    monkeypatch.setattr(opener, "precision_problem", lambda p: f"this CPU has no {p} instructions (test)")
    with pytest.warns(UserWarning, match=r"^--precision bf16: this CPU has no bf16 instructions \(test\)$"):
        assert open_predictor(backend_files["checkpoint"], precision="bf16").amp
    if "int8" in backend_files:
        monkeypatch.setattr(runners, "precision_problem", lambda p: f"this CPU has no {p} instructions (test)")
        with pytest.warns(UserWarning, match=r"^--precision int8: this CPU has no int8 instructions \(test\)$"):
            open_predictor(backend_files["int8"])
