"""Checkpoint loading: accepted formats and one clear error for every kind of bad file."""
import os

import numpy as np
import pytest
import torch

from ssd import build_ssd
from utils.loading.checkpoint import (CHECKPOINT_FORMAT, load_basenet, load_model, load_state_dict_into,
                                      model_config, read_checkpoint, save_checkpoint)
from utils.errors import UserError
from utils.inference import open_predictor


@pytest.fixture(scope="module")
def small_state():
    torch.manual_seed(0)
    return build_ssd("train", 300, 21, width=0.125).state_dict()


@pytest.fixture()
def saved(tmp_path, small_state):
    path = tmp_path / "small.pth"
    torch.save(small_state, path)
    return str(path)


class _Payload:
    """Unpickling this would run ``open(marker, 'w')``, i.e. create a file: code execution at load time."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="not found") as exc:
        load_model(path)
    assert path in str(exc.value)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(UserError, match="folder"):
        read_checkpoint(str(tmp_path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_model(str(path))


def test_truncated_file(tmp_path, saved):
    data = open(saved, "rb").read()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated") as exc:
        load_model(str(path))
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("data", [b"this is not a checkpoint\n", b'{"weights": [1, 2]}', bytes(range(256)) * 4,
                                  b"PK\x03\x04" + bytes(100)])
def test_garbage_file_is_not_a_checkpoint(tmp_path, data):
    path = tmp_path / "notes.pth"
    path.write_bytes(data)
    with pytest.raises(UserError, match="not a PyTorch checkpoint") as exc:
        load_model(str(path))
    assert "refusing" not in str(exc.value)      # garbage is not reported as a code-carrying file


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"vgg.0.weight": torch.zeros(1), "x": _Payload(str(marker))}, path)
    with pytest.raises(UserError, match="refusing") as exc:
        load_model(str(path))
    assert str(path) in str(exc.value)
    assert not marker.exists()
    # control: the payload is real — an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_python_object_is_not_a_model(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="not a model checkpoint"):
        load_model(str(path))
    path2 = tmp_path / "no_tensors.pth"
    torch.save({"epoch": 3}, path2)
    with pytest.raises(UserError, match="no weight tensors"):
        load_model(str(path2))


def test_other_network_is_not_an_ssd(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(UserError, match="not an SSD checkpoint"):
        load_model(str(path))


def test_class_count_mismatch_names_both_counts(saved):
    with pytest.raises(UserError) as exc:
        load_model(saved, num_classes=81)
    msg = str(exc.value)
    assert "checkpoint has 21 classes" in msg and "model was built for 81" in msg
    assert "conf.0 has 84 channels" in msg and saved in msg


def test_size_mismatch(saved):
    with pytest.raises(UserError, match="SSD300") as exc:
        load_model(saved, size=512)
    assert "512" in str(exc.value)


def test_nan_weights(tmp_path, small_state):
    state = {k: v.clone() for k, v in small_state.items()}
    state["extras.3.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match="NaN") as exc:
        load_model(str(path))
    assert "extras.3.weight" in str(exc.value)


def test_missing_and_unexpected_keys(tmp_path, small_state):
    state = dict(small_state)
    del state["extras.3.bias"]
    state["extras.99.weight"] = torch.zeros(3)
    path = tmp_path / "keys.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as exc:
        load_model(str(path))
    msg = str(exc.value)
    assert "missing keys" in msg and "extras.3.bias" in msg
    assert "unexpected keys" in msg and "extras.99.weight" in msg


def test_shape_mismatch_into_existing_model(saved):
    net = build_ssd("train", 300, 21, width=0.25)
    with pytest.raises(UserError, match="shape mismatch"):
        load_state_dict_into(net, saved)
    with pytest.raises(RuntimeError, match="size mismatch"):  # ssd.pytorch's method: torch's own strict load
        net.load_weights(saved)


def test_bare_state_dict_loads_and_infers_architecture(saved, small_state):
    net, meta = load_model(saved, "test", num_classes=21, size=300)
    assert net.phase == "test" and net.num_classes == 21 and net.size == 300 and not net.batch_norm
    assert meta["model_config"].width == 0.125 and meta["class_names"] is None
    assert all(torch.equal(net.state_dict()[k], v) for k, v in small_state.items())


def test_training_checkpoint_round_trip(tmp_path, small_state):
    net = build_ssd("train", 300, 4, width=0.125)
    ckpt = {"model": net.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "iteration": 12,
            "class_names": ["cat", "dog", "bird"], "config": model_config(net), "format": CHECKPOINT_FORMAT}
    path = tmp_path / "sub" / "ckpt.pth"
    save_checkpoint(ckpt, str(path))
    assert sorted(os.listdir(path.parent)) == ["ckpt.pth"]      # atomic: no temporary left behind
    loaded, meta = load_model(str(path), "test")
    assert loaded.num_classes == 4 and meta["class_names"] == ["cat", "dog", "bird"] and meta["iteration"] == 12
    bad = dict(ckpt, class_names=["cat"])
    save_checkpoint(bad, str(path))
    with pytest.raises(UserError, match="class names"):
        load_model(str(path))


def test_load_basenet_into_vgg(tmp_path, small_state):
    vgg_state = {k[len("vgg."):]: v for k, v in small_state.items() if k.startswith("vgg.")}
    path = tmp_path / "base.pth"
    torch.save(vgg_state, path)
    net = build_ssd("train", 300, 21, width=0.125)
    load_basenet(net, str(path))
    assert torch.equal(net.vgg[33].weight, small_state["vgg.33.weight"])
    # a full SSD file is not a base network
    torch.save(small_state, path)
    with pytest.raises(UserError, match="unexpected keys"):
        load_basenet(net, str(path))


@pytest.mark.parametrize("width,batch_norm", [(0.3, False), (0.1, True)])
def test_widths_whose_channels_are_not_multiples_of_64ths_load(tmp_path, width, batch_norm):
    # round(64 * 0.3) = 19 channels alone would suggest width 19/64, which gives 76 instead of 77 at conv3
    net = build_ssd("train", 300, 21, width=width, batch_norm=batch_norm)
    bare = tmp_path / "bare.pth"
    torch.save(net.state_dict(), bare)
    loaded, meta = load_model(str(bare), "train")
    assert meta["model_config"].width == pytest.approx(width, abs=2e-3)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint({"model": net.state_dict(), "config": model_config(net)}, str(ckpt))
    assert load_model(str(ckpt), "train")[0].width == width         # the stored width is used as is


def test_ssd200_checkpoint_loads_as_ssd200_and_detects(tmp_path):
    net = build_ssd("train", 200, 3, width=0.125, batch_norm=True)
    path = tmp_path / "ssd200.pth"
    save_checkpoint({"model": net.state_dict(), "config": model_config(net), "class_names": ["a", "b"]},
                    str(path))
    loaded, meta = load_model(str(path), "test")
    assert loaded.size == 200 and meta["model_config"].size == 200 and loaded.priors.shape == (3920, 4)
    bare = tmp_path / "bare.pth"
    torch.save(net.state_dict(), bare)                               # no config: size from the 5 heads
    assert load_model(str(bare), "test")[0].size == 200
    dets = open_predictor(str(path)).predict([np.zeros((90, 120, 3), np.uint8)])
    assert len(dets) == 1


def test_s2_stem_is_read_off_the_weights_and_rebuilt(tmp_path):
    net = build_ssd("train", 300, 3, width=0.125, batch_norm=True, stem="s2")
    bare = tmp_path / "bare.pth"
    torch.save(net.state_dict(), bare)                               # no config: the 7x7 conv1_1 says it
    loaded, meta = load_model(str(bare), "test")
    assert meta["model_config"].stem == "s2" and loaded.stem == "s2"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    assert model_config(net)["stem"] == "s2"
    assert meta["model_config"].width == pytest.approx(0.125)
