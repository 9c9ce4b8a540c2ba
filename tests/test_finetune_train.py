"""train.py --pretrained (fine-tuning from a trained SSD of another class set) and --basenet NAME: tiny models
(width 0.125), the tiny custom dataset of train_helpers (classes box, disc), a few iterations on the CPU; registry
names are served from a cache folder filled by hand (no network: any download would go to a closed local port)."""
from __future__ import annotations

import argparse
import os
import shutil

import pytest
import torch

import train
from train_helpers import make_tiny_dataset, tiny, train_then_resume
from utils.errors import UserError
from utils.loading.checkpoint import load_model, read_checkpoint, save_checkpoint
from utils.loading.config import ModelConfig
from utils.training.model_setup import basenet_path, build_model, load_start_weights
from utils.training.pretrained import PretrainedSource
from utils.training.settings import model_config, resolve_settings
from weights.behaviour import TORCHVISION

SOURCE_NAMES = ("BOX", "wheel", "ring")  # "box" matches the dataset's (case-insensitive), "disc" is new


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")), num=8)


@pytest.fixture(scope="module")
def pretrained(make_checkpoint, tmp_path_factory):
    """A trained-looking SSD (width 0.125, BatchNorm, COCO default boxes) on other classes that records
    torchvision's post-processing conventions, as the converted ssd300-coco does."""
    ckpt = read_checkpoint(make_checkpoint(batch_norm=True, class_names=SOURCE_NAMES, prior_config="COCO", seed=5))
    ckpt["config"].update(TORCHVISION)
    path = str(tmp_path_factory.mktemp("pretrained") / "shapes.pth")
    save_checkpoint(ckpt, path)
    return path


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    """torch.hub's cache under tmp_path; the registry's URLs point at a closed local port (nothing leaves)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("SSD_WEIGHTS_BASE_URL", "http://127.0.0.1:9/")
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder




def _rows(tensor, num_classes):
    """A class head ``[A * C, ...]`` as ``[A, C, ...]`` (row ``a * C + c``)."""
    return tensor.view(-1, num_classes, *tensor.shape[1:])


# ---------------------------------------------------------------------------------------------------------
# settings and model setup
# ---------------------------------------------------------------------------------------------------------

def _resolve(argv, pretrained_config):
    ns, explicit = train.parse_args(argv)
    return resolve_settings(ns, explicit, None, False, "cpu", pretrained_config)


def test_pretrained_architecture_and_conventions_come_from_the_file(data_root):
    config = ModelConfig(512, 81, 0.25, True, "s2", "COCO", "wh", True, 400, 200)
    s = _resolve(["--dataset", "custom", "--dataset_root", data_root, "--pretrained", "x.pth", "--preset",
                  "cpu-demo"], config)
    assert (s.size, s.width, s.batch_norm, s.stem, s.prior_scales) == (512, 0.25, True, "s2", "coco")
    assert model_config(s, 3) == config.with_classes(3)  # post-processing conventions included
    # flags that agree are accepted
    s = _resolve(["--dataset", "custom", "--dataset_root", data_root, "--pretrained", "x.pth", "--size", "512",
                  "--width", "0.25", "--stem", "s2", "--batch_norm", "--basenet", "none"], config)
    assert model_config(s, 3) == config.with_classes(3)


def test_architecture_flags_that_disagree_with_the_pretrained_file_are_one_usage_error(data_root):
    config = ModelConfig(300, 4, 0.125, True, "vgg", "COCO")
    base = ["--dataset", "custom", "--dataset_root", data_root, "--pretrained", "shapes.pth"]
    with pytest.raises(UserError) as exc:
        _resolve(base + ["--width", "0.25", "--stem", "s2", "--no-batch_norm", "--prior_scales", "voc"], config)
    assert exc.value.code == 2
    assert exc.value.message == (
        "--pretrained shapes.pth is an SSD300 of width 0.125, with BatchNorm, vgg stem, COCO default boxes; "
        "--width 0.25 and --no-batch_norm and --stem s2 and --prior_scales voc disagree — leave them out (a "
        "fine-tuning run keeps the pretrained model's architecture)")
    with pytest.raises(UserError, match="--size 512 disagree"):
        _resolve(base + ["--size", "512"], config)
    with pytest.raises(UserError, match="--basenet vgg16-reducedfc and --pretrained shapes.pth both give starting "
                                        "weights — give one") as exc:
        _resolve(base + ["--basenet", "vgg16-reducedfc"], config)
    assert exc.value.code == 2


def test_pretrained_with_resume_is_refused(data_root, tmp_path, pretrained):
    with pytest.raises(UserError, match="--pretrained starts a new run from a trained model and --resume "
                                        "continues a run — give one") as exc:
        train.main(tiny(data_root, tmp_path, "--pretrained", pretrained, "--resume", pretrained))
    assert exc.value.code == 2


def test_fine_tuning_start_copies_matching_rows_and_keeps_the_fresh_init_of_new_classes(pretrained):
    source = PretrainedSource.open(pretrained)
    src = dict(source.state)
    config = source.config.with_classes(3)
    torch.manual_seed(0)
    model = build_model(config, background_prior=0.99)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    s = argparse.Namespace(start_iter=0, max_iter=10)
    start = load_start_weights(model, config, None, ["box", "disc"], s, set(), False, source)
    assert start.pretrained and start.iteration == 0 and source.state is None  # released once loaded
    out = model.state_dict()
    for key in out:
        if not key.startswith("conf."):
            assert torch.equal(out[key], src[key]), key
    for k in range(6):
        for param in ("weight", "bias"):
            key = f"conf.{k}.{param}"
            o, s_, f = _rows(out[key], 3), _rows(src[key], 4), _rows(fresh[key], 3)
            assert torch.equal(o[:, 0], s_[:, 0]) and torch.equal(o[:, 1], s_[:, 1]), key  # background, box
            assert torch.equal(o[:, 2], f[:, 2]), key                                      # disc: as from scratch
    # the new class's bias is the --background_prior start: P(background) 0.99 for a fresh row
    assert float(_rows(out["conf.0.bias"], 3)[0, 2]) == pytest.approx(float(_rows(fresh["conf.0.bias"], 3)[0, 2]))


# ---------------------------------------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------------------------------------

def test_pretrained_run_says_what_was_transferred_freezes_and_records_the_source(data_root, tmp_path, pretrained,
                                                                                 capsys):
    assert train.main(tiny(data_root, tmp_path, "--pretrained", pretrained, "--max_iter", 2)) == 0
    out = capsys.readouterr().out
    assert (f"fine-tuning from {pretrained}: SSD300 width 0.125, 3 classes; 1 class transferred: box (from BOX); "
            "1 new: disc") in out
    assert "frozen: VGG up to conv2_2" in out  # --freeze auto: as for a run from a base network
    final = str(tmp_path / "ssd300_custom_final.pth")
    ckpt = read_checkpoint(final)
    assert ckpt["class_names"] == ["box", "disc"] and ckpt["config"]["pretrained"] == pretrained
    assert ckpt["config"]["freeze"] == "conv2" and ckpt["config"]["batch_norm"] is True
    source = read_checkpoint(pretrained)["model"]
    assert torch.equal(ckpt["model"]["vgg.0.weight"], source["vgg.0.weight"])  # conv1_1: frozen
    assert not torch.equal(ckpt["model"]["vgg.14.weight"], source["vgg.14.weight"])  # conv3_1: trained
    model, meta = load_model(final, "test")  # runs with the pretrained file's post-processing
    assert meta["model_config"].prior_config == "COCO" and model.detect.clip is True
    assert model.detect.nms_top_k == 400 and model.detect.keep_top_k == 200


def test_fine_tuning_run_resumes_exactly(data_root, tmp_path, pretrained):
    args = ["--pretrained", pretrained, "--max_iter", 6, "--save_every", 3, "--augment", "flip", "--warmup", 2,
            "--lr_steps", 5, "--grad_clip", 5, "--seed", 7, "--freeze", "conv1"]
    _, resumed, a, b = train_then_resume(data_root, tmp_path, args, str(tmp_path / "logs"))
    assert "at iteration 3" in resumed.stdout and "fine-tuning" not in resumed.stdout
    assert "frozen: VGG up to conv1_2" in resumed.stdout
    assert [r["iteration"] for r in b] == [4, 5, 6]
    assert [(r["loss"], r["lr"]) for r in a[3:]] == [(r["loss"], r["lr"]) for r in b]
    final_a = read_checkpoint(str(tmp_path / "a" / "ssd300_custom_final.pth"))
    final_b = read_checkpoint(str(tmp_path / "b" / "ssd300_custom_final.pth"))
    assert final_a["model"].keys() == final_b["model"].keys()
    for key in final_a["model"]:
        assert torch.equal(final_a["model"][key], final_b["model"][key]), key
    for key in ("prior_clip", "clip_before_nms", "nms_candidates", "max_per_image", "pretrained"):
        assert final_b["config"][key] == final_a["config"][key], key
    assert final_b["config"]["prior_clip"] == "wh"


# ---------------------------------------------------------------------------------------------------------
# registry names
# ---------------------------------------------------------------------------------------------------------

def test_pretrained_takes_a_registry_name_and_a_local_path_wins(data_root, tmp_path, pretrained, offline_cache,
                                                                capsys):
    cached = offline_cache / "ssd300_mAP_77.43_v2.pth"  # ssd300-voc's file, put in the cache by hand
    shutil.copy(pretrained, cached)
    assert train.main(tiny(data_root, tmp_path / "w", "--pretrained", "ssd300-voc", "--max_iter", 1)) == 0
    assert f"fine-tuning from ssd300-voc ({cached}): SSD300 width 0.125" in capsys.readouterr().out
    assert read_checkpoint(str(tmp_path / "w" / "ssd300_custom_final.pth"))["config"]["pretrained"] == "ssd300-voc"
    local = tmp_path / "ssd300-voc"  # a file of that name in the working folder wins over the registry
    shutil.copy(pretrained, local)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert PretrainedSource.open("ssd300-voc").path == "ssd300-voc"
    finally:
        os.chdir(cwd)
    with pytest.raises(UserError, match="vgg16-reducedfc is a basenet, not a detector") as exc:
        PretrainedSource.open("vgg16-reducedfc")
    assert exc.value.code == 2


def test_basenet_takes_a_registry_name_and_a_local_file_wins(tmp_path, offline_cache, data_root):
    cached = offline_cache / "vgg16_reducedfc.pth"
    torch.save({"0.weight": torch.zeros(1)}, cached)
    save_folder = tmp_path / "weights"
    save_folder.mkdir()
    assert basenet_path("vgg16-reducedfc", str(save_folder)) == str(cached)
    (save_folder / "vgg16-reducedfc").write_bytes(cached.read_bytes())
    assert basenet_path("vgg16-reducedfc", str(save_folder)) == str(save_folder / "vgg16-reducedfc")
    with pytest.raises(UserError, match="ssd300-coco is a detector, not a basenet") as exc:
        basenet_path("ssd300-coco", str(save_folder))
    assert exc.value.code == 2
    # a name that does not fit the model is refused before anything is downloaded (the URL is a closed port)
    with pytest.raises(UserError, match="--basenet vgg16-imagenet holds the paper's VGG-16; it does not fit "
                                        "--width 0.125"):
        train.main(tiny(data_root, tmp_path / "w", "--basenet", "vgg16-imagenet", "--max_iter", 1))
    assert not (offline_cache / "vgg16-397923af.pth").exists()
