"""weights/convert_vgg.py: torchvision VGG-16 → vgg16_reducedfc.pth, on a randomly initialised VGG-16."""
import os
import runpy
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ssd import build_ssd
from utils.loading.checkpoint import load_basenet
from utils.errors import UserError
from weights.convert_vgg import VGG16_CONVS, convert_file, convert_vgg16, main

EXPECTED_KEYS = [f"{i}.{p}" for i in [c[0] for c in VGG16_CONVS] + [31, 33] for p in ("weight", "bias")]


@pytest.fixture(scope="module")
def vgg_state():
    torch.manual_seed(0)
    state = torchvision.models.vgg16(weights=None).state_dict()
    # torchvision initialises biases to zero: give them values so that bias decimation is checked too
    for k, v in state.items():
        if k.endswith(".bias"):
            v.copy_(torch.randn_like(v))
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory, vgg_state):
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(vgg_state, path)
    return str(path)


def test_keys_and_shapes(vgg_state):
    out = convert_vgg16(vgg_state)
    assert list(out) == EXPECTED_KEYS and len(out) == 30
    assert sum(v.numel() for v in out.values()) == 20_483_904      # weights/README.md's figure
    assert out["31.weight"].shape == (1024, 512, 3, 3) and out["31.bias"].shape == (1024,)
    assert out["33.weight"].shape == (1024, 1024, 1, 1) and out["33.bias"].shape == (1024,)
    assert all(v.is_contiguous() and v.dtype == torch.float32 for v in out.values())


def test_conv_layers_copied_exactly(vgg_state):
    out = convert_vgg16(vgg_state)
    for idx, _, _ in VGG16_CONVS:
        assert torch.equal(out[f"{idx}.weight"], vgg_state[f"features.{idx}.weight"])
        assert torch.equal(out[f"{idx}.bias"], vgg_state[f"features.{idx}.bias"])


def test_fc6_fc7_decimation(vgg_state):
    out = convert_vgg16(vgg_state)
    fc6 = vgg_state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(out["31.weight"], fc6[::4, :, ::3, ::3])
    assert torch.equal(out["31.bias"], vgg_state["classifier.0.bias"][::4])
    # element by element: conv6 filter o, tap (r, c) is fc6 row 4o at input (channel, 3r, 3c)
    o, ch, r, c = 5, 300, 2, 1
    assert out["31.weight"][o, ch, r, c] == vgg_state["classifier.0.weight"][4 * o, ch * 49 + (3 * r) * 7 + 3 * c]
    fc7 = vgg_state["classifier.3.weight"]
    assert torch.equal(out["33.weight"][:, :, 0, 0], fc7[::4, ::4])
    assert out["33.weight"][7, 9, 0, 0] == fc7[28, 36]
    assert torch.equal(out["33.bias"], vgg_state["classifier.3.bias"][::4])


def test_cli_writes_file_that_loads_strictly_into_ssd_vgg(tmp_path, vgg_file, vgg_state, capsys):
    dst = tmp_path / "out" / "vgg16_reducedfc.pth"
    assert main([vgg_file, "-o", str(dst)]) == 0
    assert "30 tensors" in capsys.readouterr().out
    assert os.listdir(dst.parent) == ["vgg16_reducedfc.pth"]          # atomic: no temporary left behind
    state = torch.load(dst, weights_only=True)
    assert list(state) == EXPECTED_KEYS
    # small file: the decimated fc6/fc7 were saved without their 4096-wide parents
    assert os.path.getsize(dst) < 100 * 2 ** 20
    net = build_ssd("train", 300, 21)
    net.vgg.load_state_dict(state, strict=True)
    load_basenet(net, str(dst))                                        # the project's loader too
    assert torch.equal(net.vgg[31].weight, vgg_state["classifier.0.weight"].view(4096, 512, 7, 7)[::4, :, ::3, ::3])
    assert torch.equal(net.vgg[0].weight, vgg_state["features.0.weight"])


def test_fold_input_norm_matches_torchvision_input_scale(vgg_state):
    out = convert_vgg16(vgg_state, fold_input_norm=True)
    torch.manual_seed(1)
    x = torch.rand(1, 3, 16, 16) * 255                                  # RGB 0-255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    tv = F.conv2d((x / 255 - mean) / std, vgg_state["features.0.weight"], vgg_state["features.0.bias"], padding=1)
    ssd_in = x - torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1)
    ours = F.conv2d(ssd_in, out["0.weight"], out["0.bias"], padding=1)
    assert torch.allclose(ours[..., 1:-1, 1:-1], tv[..., 1:-1, 1:-1], atol=1e-4)   # borders: zero padding differs
    assert torch.equal(out["2.weight"], vgg_state["features.2.weight"])        # only conv1_1 changes


def test_not_a_vgg16_state_dict(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), path)
    with pytest.raises(UserError, match="not a torchvision VGG-16 state_dict") as exc:
        convert_file(str(path), str(tmp_path / "x.pth"))
    assert str(path) in str(exc.value)
    assert not (tmp_path / "x.pth").exists()


def test_wrong_shapes_and_batch_norm_variants_rejected(vgg_state, tmp_path):
    bad = dict(vgg_state)
    bad["classifier.0.weight"] = torch.zeros(4096, 100)
    with pytest.raises(UserError, match="wrong shapes"):
        convert_vgg16(bad)
    bn = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.1.running_mean": torch.zeros(64)}
    with pytest.raises(UserError, match="batch-norm"):
        convert_vgg16(bn)
    already = {f"{k}": torch.zeros(1) for k in EXPECTED_KEYS}
    with pytest.raises(UserError, match="already an SSD base network"):
        convert_vgg16(already)


def test_cli_user_errors_are_one_line_without_traceback(tmp_path, monkeypatch, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    for src in (str(text), str(tmp_path / "missing.pth")):
        # run as `python -m weights.convert_vgg SRC -o DST` would, in this process (no interpreter start-up)
        monkeypatch.setattr(sys, "argv", ["convert_vgg", src, "-o", str(tmp_path / "o.pth")])
        monkeypatch.delitem(sys.modules, "weights.convert_vgg", raising=False)
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("weights.convert_vgg", run_name="__main__")
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and src in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.pth").exists()


def test_refuses_to_overwrite_its_input(vgg_file):
    with pytest.raises(UserError, match="overwrite"):
        convert_file(vgg_file, vgg_file)
