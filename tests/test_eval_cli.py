"""eval.py: scoring saved results files, bad inputs (one line, exit != 0, no traceback), and an end-to-end
run of a tiny random model on a 6-image synthetic set; evaluate_model with an oracle predictor."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval as eval_cli
from utils.errors import run_cli
from utils.metrics.voc import ClassDetections, evaluate, load_annotations, write_voc_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "dog"]


def run(argv, capsys):
    """Run eval.py's main through run_cli in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(eval_cli.main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_line_error(code, err, *needles):
    assert code not in (0, None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def xml(objects):
    body = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    return f"<annotation><size><width>200</width><height>200</height><depth>3</depth></size>{body}</annotation>"


@pytest.fixture
def labelled_set(tmp_path):
    """A custom VOC-layout set with annotations only (scoring results needs no images) and results files."""
    root = tmp_path / "set"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "labels.txt").write_text("cat\ndog\n")
    objects = {"a": [("cat", (10, 10, 60, 60), False), ("dog", (100, 100, 150, 180), False)],
               "b": [("cat", (20, 30, 90, 80), False), ("cat", (120, 120, 140, 140), True)],
               "c": [("dog", (5, 5, 195, 195), False)]}
    for i, objs in objects.items():
        (root / "Annotations" / f"{i}.xml").write_text(xml(objs))
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\nb\nc\n")
    dets = {"cat": ClassDetections(["a", "b", "c", "b"], np.array([0.9, 0.8, 0.7, 0.6]),
                                   np.array([[10, 10, 60, 60], [22, 30, 90, 80], [1, 1, 50, 50], [120, 120, 140, 140]],
                                            float)),
            "dog": ClassDetections(["c", "a"], np.array([0.4, 0.95]),
                                   np.array([[5, 5, 190, 195], [0, 0, 20, 20]], float))}
    results = tmp_path / "results"
    write_voc_results(str(results), "test", CLASSES, dets)
    ann = load_annotations({i: str(root / "Annotations" / f"{i}.xml") for i in objects})
    return root, results, evaluate(dets, ann, CLASSES)


# --------------------------------------------------------------------------------------------------------
# --results_dir
# --------------------------------------------------------------------------------------------------------

def test_results_dir_is_scored_without_a_model(labelled_set, tmp_path, capsys):
    root, results, expected = labelled_set
    summary = tmp_path / "summary.json"
    code, out, _ = run(["--results_dir", str(results), "--dataset", "custom", "--dataset_root", str(root),
                        "--trained_model", str(tmp_path / "no_such_model.pth"), "--json", str(summary)], capsys)
    assert code == 0
    data = json.loads(summary.read_text())
    assert data["metric"] == "voc07" and data["num_images"] == 3
    assert data["ap"] == pytest.approx(expected["ap"]) and data["mAP"] == pytest.approx(expected["mAP"])
    assert data["images_per_second"] is None
    assert "mAP (voc07)" in out and f"{expected['mAP']:.4f}" in out


def test_results_dir_area_metric_and_voc_layout(labelled_set, tmp_path, capsys):
    root, results, _ = labelled_set
    devkit = tmp_path / "VOCdevkit"
    devkit.mkdir()
    os.rename(root, devkit / "VOC2007")
    # VOC class names: write results for all 20 classes, only 'cat' and 'dog' with detections
    from data.voc0712 import VOC_CLASSES
    for name in VOC_CLASSES:
        p = results / f"comp4_det_test_{name}.txt"
        if not p.exists():
            p.write_text("")
    summary = tmp_path / "s.json"
    code, _, _ = run(["--results_dir", str(results), "--voc_root", str(devkit), "--metric", "area",
                      "--json", str(summary)], capsys)
    assert code == 0
    data = json.loads(summary.read_text())
    assert data["metric"] == "area" and len(data["ap"]) == 20
    assert data["ap"]["aeroplane"] is None  # no ground truth of that class in the set


def test_missing_results_class_file(labelled_set, capsys):
    root, results, _ = labelled_set
    os.remove(results / "comp4_det_test_dog.txt")
    code, _, err = run(["--results_dir", str(results), "--dataset", "custom", "--dataset_root", str(root)], capsys)
    assert_one_line_error(code, err, "comp4_det_test_dog.txt")


def test_missing_results_class_file_from_a_real_process(labelled_set):
    root, results, _ = labelled_set
    os.remove(results / "comp4_det_test_cat.txt")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--results_dir", str(results),
                           "--dataset", "custom", "--dataset_root", str(root)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "comp4_det_test_cat.txt")


# --------------------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------------------

def test_missing_dataset_root(tmp_path, capsys):
    code, _, err = run(["--dataset", "custom", "--dataset_root", str(tmp_path / "nowhere"), "--device", "cpu",
                        "--save_folder", str(tmp_path / "ev")], capsys)
    assert_one_line_error(code, err, "nowhere")
    assert not (tmp_path / "ev").exists()


def test_missing_model_file(labelled_set, tmp_path, capsys):
    root, _, _ = labelled_set
    code, _, err = run(["--dataset", "custom", "--dataset_root", str(root), "--device", "cpu",
                        "--trained_model", str(tmp_path / "missing.pth"), "--save_folder", str(tmp_path / "ev")],
                       capsys)
    assert_one_line_error(code, err, "missing.pth")
    assert not (tmp_path / "ev").exists()  # nothing written for a failed run


def test_cuda_device_without_cuda(labelled_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root, _, _ = labelled_set
    code, _, err = run(["--dataset", "custom", "--dataset_root", str(root), "--device", "cuda"], capsys)
    assert_one_line_error(code, err, "CUDA")
    assert code == 2


@pytest.mark.parametrize("flag,value,message", [
    ("--batch_size", "0", "--batch_size must be at least 1, got 0"),
    ("--num_workers", "-1", "--num_workers must be 0 or more, got -1"),
    ("--top_k", "0", "--top_k must be at least 1, got 0"),
    ("--max_images", "0", "--max_images must be at least 1, got 0"),
    ("--confidence_threshold", "1", "--confidence_threshold must be in [0, 1), got 1.0"),
    ("--confidence_threshold", "nan", "--confidence_threshold must be in [0, 1), got nan"),
    ("--batch_size", "two", "argument --batch_size: invalid int value: 'two'"),
    ("--size", "400", "--size"),
])
def test_bad_flag_values_are_usage_errors(flag, value, message, capsys):
    code, _, err = run([flag, value], capsys)
    assert_one_line_error(code, err, message, "(see python eval.py --help)")
    assert code == 2


def test_results_naming_images_outside_the_set(labelled_set, capsys):
    root, results, _ = labelled_set
    with open(results / "comp4_det_test_cat.txt", "a") as fh:
        fh.write("zzz 0.5 1.0 1.0 5.0 5.0\n")
    code, _, err = run(["--results_dir", str(results), "--dataset", "custom", "--dataset_root", str(root)], capsys)
    assert_one_line_error(code, err, "zzz")


def test_plot_without_matplotlib_is_a_usage_error(labelled_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    root, results, _ = labelled_set
    plots = tmp_path / "plots"
    code, _, err = run(["--results_dir", str(results), "--dataset", "custom", "--dataset_root", str(root),
                        "--plot", str(plots)], capsys)
    assert_one_line_error(code, err, "--plot needs matplotlib", "pip install matplotlib")
    assert code == 2
    assert not plots.exists()


def test_plot_writes_one_png_curve_per_class(labelled_set, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is in requirements-optional.txt (scripts/test.sh installs it)")
    root, results, _ = labelled_set
    plots = tmp_path / "plots"
    code, _, err = run(["--results_dir", str(results), "--dataset", "custom", "--dataset_root", str(root),
                        "--plot", str(plots)], capsys)
    assert code == 0, err
    assert sorted(os.listdir(plots)) == ["pr_cat.png", "pr_dog.png"]
    for name in ("pr_cat.png", "pr_dog.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 2 precision-recall curves" in err


# --------------------------------------------------------------------------------------------------------
# end to end: tiny random model on a 6-image synthetic set
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tiny_dataset):
    return tiny_dataset


@pytest.fixture(scope="module")
def tiny_checkpoint(synthetic, make_checkpoint):
    return make_checkpoint(class_names=(synthetic / "labels.txt").read_text().split())


def _non_difficult_counts(root, split, names):
    from utils.metrics.voc import parse_voc_xml

    counts = dict.fromkeys(names, 0)
    for i in (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
        for obj in parse_voc_xml(str(root / "Annotations" / f"{i}.xml")):
            counts[obj["name"]] += not obj["difficult"]
    return counts


def test_end_to_end_writes_results_files_and_json(synthetic, tiny_checkpoint, tmp_path, capsys):
    names = (synthetic / "labels.txt").read_text().split()
    save, summary = tmp_path / "ev", tmp_path / "summary.json"
    code, out, err = run(["--trained_model", str(tiny_checkpoint), "--dataset", "custom", "--dataset_root",
                          str(synthetic), "--set", "trainval", "--device", "cpu", "--batch_size", "2",
                          "--num_workers", "0", "--save_folder", str(save), "--json", str(summary), "--coco",
                          "--no-progress"], capsys)
    assert code == 0, err
    n_images = len((synthetic / "ImageSets" / "Main" / "trainval.txt").read_text().split())
    for name in names:
        assert (save / f"comp4_det_trainval_{name}.txt").is_file()
    data = json.loads(summary.read_text())
    assert data["num_images"] == n_images and data["images_per_second"] > 0
    assert set(data["ap"]) == set(names)
    assert data["npos"] == _non_difficult_counts(synthetic, "trainval", names)  # the ground truth it scored on
    assert all(v is None or 0.0 <= v <= 1.0 for v in data["ap"].values())
    assert 0.0 <= data["coco"]["AP"] <= 1.0
    # the devkit files and the COCO results JSON hold the same detections
    voc_lines = sum(len((save / f"comp4_det_trainval_{n}.txt").read_text().splitlines()) for n in names)
    coco = json.loads((save / "coco_results_trainval.json").read_text())
    assert voc_lines == len(coco) == sum(data["num_detections"].values()) > 0
    assert {r["category_id"] for r in coco} <= set(range(1, len(names) + 1))
    assert data["mAP"] == pytest.approx(np.nanmean([np.nan if v is None else v for v in data["ap"].values()]))
    assert f"{n_images} images in" in out and "images/s" in out

    # the files it wrote, scored again without the model, give the same numbers
    again = tmp_path / "again.json"
    code, _, _ = run(["--results_dir", str(save), "--dataset", "custom", "--dataset_root", str(synthetic),
                      "--set", "trainval", "--json", str(again), "--coco"], capsys)
    assert code == 0
    rescored = json.loads(again.read_text())
    assert rescored["ap"] == data["ap"] and rescored["mAP"] == data["mAP"]
    assert rescored["coco"]["AP"] == pytest.approx(data["coco"]["AP"])


def test_cleanup_removes_the_results_files(synthetic, tiny_checkpoint, tmp_path, capsys):
    save = tmp_path / "ev"
    code, _, err = run(["--trained_model", str(tiny_checkpoint), "--dataset", "custom", "--dataset_root",
                        str(synthetic), "--set", "trainval", "--device", "cpu", "--num_workers", "0",
                        "--max_images", "2", "--save_folder", str(save), "--cleanup", "--no-progress"], capsys)
    assert code == 0, err
    assert os.listdir(save) == []


class OraclePredictor:
    """Returns each image's ground truth (0-based pixel boxes) as detections, in dataset order."""

    def __init__(self, dataset):
        from utils.inference.predictor import Detections
        from utils.metrics.voc import parse_voc_xml

        self.class_names = list(dataset.class_names)
        self.size, self.device, self.calls = 300, torch.device("cpu"), 0
        label = {n.lower(): k + 1 for k, n in enumerate(self.class_names)}
        self.answers = []
        for i in range(len(dataset)):
            objs = parse_voc_xml(dataset.annotation_file(i))
            boxes = np.array([o["bbox"] for o in objs], np.float32).reshape(-1, 4) - 1.0
            self.answers.append(Detections(boxes, np.linspace(0.9, 0.5, len(objs)).astype(np.float32),
                                           np.array([label[o["name"].lower()] for o in objs], np.int64)))

    def predict_batch(self, x, image_sizes):
        assert x.shape[1:] == (3, 300, 300) and x.dtype == torch.float32
        out = self.answers[self.calls:self.calls + len(image_sizes)]
        self.calls += len(image_sizes)
        return out


def test_evaluate_model_gives_one_for_ground_truth_detections(synthetic):
    from data import build_dataset
    from utils.metrics.coco import load_coco_gt
    from utils.metrics.evaluation import coco_json_path, evaluate_model

    ds = build_dataset("custom", str(synthetic), "trainval", keep_difficult=True)
    res = evaluate_model(OraclePredictor(ds), ds, batch_size=2, num_workers=0, coco=True,
                         coco_gt=load_coco_gt(coco_json_path(str(synthetic), "trainval")))
    assert res["mAP"] == pytest.approx(1.0)
    assert res["coco"]["AP"] == pytest.approx(1.0)
    assert res["num_images"] == len(ds)

    # --dataset COCO on the same images (its JSON): COCO AP only
    coco_ds = build_dataset("COCO", str(synthetic), "trainval")
    res = evaluate_model(OraclePredictor(ds), coco_ds, batch_size=3, num_workers=0)
    assert res["metric"] == "coco" and res["mAP"] == pytest.approx(1.0)


def test_class_names_of_model_and_dataset_must_agree():
    from utils.errors import UserError
    from utils.metrics.evaluation import class_mapping

    np.testing.assert_array_equal(class_mapping(["dog", "Cat"], ["cat", "dog"]), [0, 2, 1])
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(class_mapping(["class_1", "class_2"], ["cat", "dog"]), [0, 1, 2])
    with pytest.raises(UserError, match="bird"):
        class_mapping(["cat", "bird"], ["cat", "dog"])


def test_library_errors_name_no_cli_flags(synthetic, tmp_path):
    # the metrics library words errors in its own terms; eval.py words them for its flags (tests above)
    from data import build_dataset
    from utils.errors import UserError
    from utils.metrics.evaluation import collect_detections, score_results, voc_ground_truth

    ds = build_dataset("custom", str(synthetic), "trainval")
    with pytest.raises(ValueError, match="^batch_size must be at least 1, got 0$"):
        collect_detections(OraclePredictor(ds), ds, batch_size=0)
    with pytest.raises(ValueError, match="^num_workers must be 0 or more, got -1$"):
        collect_detections(OraclePredictor(ds), ds, num_workers=-1)
    with pytest.raises(UserError) as info:
        score_results(str(tmp_path / "none"), "custom", str(synthetic))
    assert info.value.message.startswith("results folder not found:") and "--" not in info.value.message
    with pytest.raises(UserError) as info:
        voc_ground_truth("VOC", str(tmp_path), "test", year="2099")
    assert "VOC2099" in info.value.message and "--" not in info.value.message
