"""Model names wherever a model file is taken (issue 17): each CLI resolves a registry name to the cached file —
no network when it is cached — and a local path of the same name wins."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

import eval as eval_cli
import object_detection
from utils.export import main as export_main
from weights import registry
from weights.hub import converted_path

NAME = "ssd300-coco"


@pytest.fixture
def cached_coco(make_checkpoint, tmp_path, monkeypatch):
    """TORCH_HOME holding a tiny stand-in for the converted ssd300-coco file; no server is running."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("SSD_WEIGHTS_BASE_URL", "http://127.0.0.1:9")  # discard port: any request would fail
    path = converted_path(registry.get(NAME))
    os.makedirs(os.path.dirname(path))
    shutil.copy(make_checkpoint(class_names=("a", "b")), path)
    return path


def test_object_detection_takes_a_cached_model_name_without_a_request(cached_coco, tmp_path, capsys):
    image = str(tmp_path / "in.png")
    cv2.imwrite(image, np.full((64, 80, 3), 127, np.uint8))
    out = str(tmp_path / "out.png")
    object_detection.main([NAME, image, "-o", out, "--device", "cpu", "--json", str(tmp_path / "d.json")])
    assert cv2.imread(out).shape == (64, 80, 3)
    assert json.loads((tmp_path / "d.json").read_text())["class_names"] == ["a", "b"]


def test_export_takes_a_model_name(cached_coco, tmp_path):
    out = tmp_path / "m.onnx"
    assert export_main([NAME, "-o", str(out), "--no-check"]) == 0
    assert out.stat().st_size > 0


def test_eval_takes_a_model_name(cached_coco, tiny_dataset, make_checkpoint, tmp_path):
    shutil.copy(make_checkpoint(), cached_coco)  # the dataset's classes, so the evaluation can run
    j = tmp_path / "e.json"
    eval_cli.main(["--trained_model", NAME, "--dataset", "custom", "--dataset_root", str(tiny_dataset),
                   "--set", "test", "--save_folder", str(tmp_path / "ev"), "--device", "cpu", "--num_workers", "0",
                   "--json", str(j)])
    assert json.loads(j.read_text())["model"] == cached_coco


def test_a_local_file_wins_over_a_model_name(cached_coco, make_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(make_checkpoint(class_names=("x", "y", "z")), NAME)  # a file literally named like the model
    image = str(tmp_path / "in.png")
    cv2.imwrite(image, np.zeros((32, 32, 3), np.uint8))
    object_detection.main([NAME, image, "-o", str(tmp_path / "o.png"), "--device", "cpu", "--json",
                           str(tmp_path / "d.json")])
    assert json.loads((tmp_path / "d.json").read_text())["class_names"] == ["x", "y", "z"]
