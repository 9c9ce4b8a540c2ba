"""The SSD module: ssd.pytorch's exact state_dict, output shapes, priors as a buffer, SSD512, variants."""
import pytest
import torch
from torch import nn

from data.config import coco, get_config, voc, voc512
from layers.detection import Detect
from layers.prior_box import PriorBox
from ssd import SSD, build_ssd
from utils.loading.checkpoint import load_model

# ssd.pytorch's SSD300 state_dict for 21 classes, in registration order (reference §2).
_VGG = [(0, 64, 3, 3), (2, 64, 64, 3), (5, 128, 64, 3), (7, 128, 128, 3), (10, 256, 128, 3), (12, 256, 256, 3),
        (14, 256, 256, 3), (17, 512, 256, 3), (19, 512, 512, 3), (21, 512, 512, 3), (24, 512, 512, 3),
        (26, 512, 512, 3), (28, 512, 512, 3), (31, 1024, 512, 3), (33, 1024, 1024, 1)]
_EXTRAS = [(256, 1024, 1), (512, 256, 3), (128, 512, 1), (256, 128, 3), (128, 256, 1), (256, 128, 3),
           (128, 256, 1), (256, 128, 3)]
_SOURCES = [512, 1024, 512, 256, 256, 256]
_ANCHORS = [4, 6, 6, 6, 4, 4]


def ssd_pytorch_keys(num_classes=21):
    keys = []
    for i, o, c, k in _VGG:
        keys += [(f"vgg.{i}.weight", (o, c, k, k)), (f"vgg.{i}.bias", (o,))]
    keys.append(("L2Norm.weight", (512,)))
    for i, (o, c, k) in enumerate(_EXTRAS):
        keys += [(f"extras.{i}.weight", (o, c, k, k)), (f"extras.{i}.bias", (o,))]
    for head, per in (("loc", 4), ("conf", num_classes)):
        for i, (c, a) in enumerate(zip(_SOURCES, _ANCHORS)):
            keys += [(f"{head}.{i}.weight", (a * per, c, 3, 3)), (f"{head}.{i}.bias", (a * per,))]
    return keys


@pytest.fixture(scope="module")
def ssd300():
    torch.manual_seed(0)
    return build_ssd("train", 300, 21).eval()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_ssd("train", 300, 21, width=0.125).eval()


def test_state_dict_is_exactly_ssd_pytorch(ssd300):
    sd = ssd300.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == ssd_pytorch_keys(21)
    assert len(sd) == 71
    assert sum(v.numel() for v in sd.values()) == 26_285_486
    assert sum(p.numel() for p in ssd300.parameters()) == 26_285_486


def test_state_dict_for_coco_81_classes():
    net = build_ssd("train", 300, 81)
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == ssd_pytorch_keys(81)
    assert net.state_dict()["conf.0.weight"].shape[0] == 324
    assert net.priors[0, 2].item() == pytest.approx(21 / 300)      # COCO priors picked for 81 classes


def test_vgg_layer_layout(ssd300):
    convs = [i for i, m in enumerate(ssd300.vgg) if isinstance(m, nn.Conv2d)]
    assert convs == [i for i, *_ in _VGG] and len(ssd300.vgg) == 35
    assert ssd300.vgg[16].ceil_mode and not ssd300.vgg[9].ceil_mode
    assert (ssd300.vgg[30].kernel_size, ssd300.vgg[30].stride, ssd300.vgg[30].padding) == (3, 1, 1)
    assert ssd300.vgg[31].dilation == (6, 6) and ssd300.vgg[31].padding == (6, 6)
    assert [m.stride[0] for m in ssd300.extras] == [1, 2, 1, 2, 1, 1, 1, 1]
    assert [m.padding[0] for m in ssd300.extras] == [0, 1, 0, 1, 0, 0, 0, 0]


def test_init_like_ssd_pytorch(ssd300):
    assert (ssd300.L2Norm.weight == 20).all()
    for module in (ssd300.extras, ssd300.loc, ssd300.conf):
        for m in module:
            assert (m.bias == 0).all()
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            bound = (6.0 / (fan_in + fan_out)) ** 0.5       # xavier-uniform bound
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound


def test_priors_are_a_non_persistent_buffer_that_follows_to(small):
    assert "priors" not in small.state_dict()
    assert "priors" in dict(small.named_buffers())
    assert torch.equal(small.priors, PriorBox(voc).forward())
    moved = build_ssd("train", 300, 21, width=0.125).to("meta")
    assert moved.priors.device.type == "meta"
    doubled = build_ssd("train", 300, 21, width=0.125).to(torch.float64)
    assert doubled.priors.dtype == torch.float64


def test_train_output_shapes_full_model(ssd300):
    with torch.no_grad():
        loc, conf, priors = ssd300(torch.randn(1, 3, 300, 300))
    assert loc.shape == (1, 8732, 4) and conf.shape == (1, 8732, 21) and priors.shape == (8732, 4)
    assert torch.isfinite(loc).all() and torch.isfinite(conf).all()


def test_feature_map_sizes(small):
    with torch.no_grad():
        feats = small.features(torch.randn(2, 3, 300, 300))
    assert [f.shape[-1] for f in feats] == [38, 19, 10, 5, 3, 1]
    assert [f.shape[1] for f in feats] == [64, 128, 64, 32, 32, 32]   # width 0.125 channels
    # conv4_3 is L2-normalised: per-location channel norm equals the scale wherever it is non-zero; the scale is
    # 20 at 512 channels and keeps the per-channel magnitude 20/sqrt(512) at other widths (64 channels here)
    norms = feats[0].pow(2).sum(1).sqrt()
    scale = 20.0 * (64 / 512) ** 0.5
    assert torch.allclose(norms[norms > 0], torch.full_like(norms[norms > 0], scale), rtol=1e-4)


def test_l2norm_starts_at_the_paper_scale_for_the_faithful_model():
    model = build_ssd("train", 300, 21)
    assert torch.equal(model.L2Norm.weight, torch.full((512,), 20.0))


def test_background_prior_init_makes_every_prior_start_as_background():
    model = build_ssd("train", 300, 4, width=0.125, batch_norm=True).eval()
    model.init_background_prior(0.99)
    for head in model.conf:
        b = head.bias.view(-1, 4)
        probs = torch.softmax(b, dim=1)
        assert torch.allclose(probs[:, 0], torch.full_like(probs[:, 0], 0.99))
    with pytest.raises(ValueError):
        model.init_background_prior(1.0)


def test_ssd200_has_five_sources_and_3920_priors():
    model = build_ssd("train", 200, 6, width=0.125, batch_norm=True)
    with torch.no_grad():
        feats = model.features(torch.randn(2, 3, 200, 200))
        loc, conf, priors = model(torch.randn(2, 3, 200, 200))
    assert [f.shape[-1] for f in feats] == [25, 13, 7, 4, 2]
    assert priors.shape == (3920, 4) and loc.shape == (2, 3920, 4) and conf.shape == (2, 3920, 6)


def test_head_outputs_in_row_col_anchor_order(small):
    # the flattened prediction for (map 0, row i, col j, anchor a) must be the head's channel block a at (i, j)
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        loc, conf = small.forward_raw(x)
        src = small.features(x)[0]
        head_loc = small.loc[0](src)            # [1, 16, 38, 38]
        head_conf = small.conf[0](src)          # [1, 84, 38, 38]
    i, j, a = 7, 11, 3
    p = (i * 38 + j) * 4 + a
    assert torch.allclose(loc[0, p], head_loc[0, a * 4:(a + 1) * 4, i, j], atol=1e-5)
    assert torch.allclose(conf[0, p], head_conf[0, a * 21:(a + 1) * 21, i, j], atol=1e-5)


def test_test_phase_output_is_detect_of_train_outputs(small):
    net = build_ssd("test", 300, 21, width=0.125).eval()
    net.load_state_dict(small.state_dict())
    x = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        out = net(x)
        loc, conf, priors = small(x)
    assert out.shape == (2, 21, 200, 5)
    expected = Detect(21, 0, 200, 0.01, 0.45, (0.1, 0.2))(loc, torch.softmax(conf, -1), priors)
    assert torch.allclose(out, expected, atol=1e-6)
    assert (out[:, 0] == 0).all() and (out[..., 0] > 0).any()


def test_ssd512_priors_keys_and_forward():
    net = build_ssd("train", 512, 21, width=0.125)
    assert net.priors.shape == (24564, 4)
    assert torch.equal(net.priors, PriorBox(voc512).forward())
    assert len(net.loc) == 7 and len(net.extras) == 10
    assert [m.out_channels // 4 for m in net.loc] == [4, 6, 6, 6, 6, 4, 4]
    assert net.extras[9].kernel_size == (4, 4)
    with torch.no_grad():
        feats = net.features(torch.randn(1, 3, 512, 512))
        loc, conf = net.forward_raw(torch.randn(1, 3, 512, 512))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4, 2, 1]
    assert loc.shape == (1, 24564, 4) and conf.shape == (1, 24564, 21)
    with torch.device("meta"):                     # shapes only: skip the 27M-parameter initialisation
        full = build_ssd("test", 512, 81)
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert shapes["extras.8.weight"] == (128, 256, 1, 1) and shapes["extras.9.weight"] == (256, 128, 4, 4)
    assert shapes["loc.6.weight"] == (16, 256, 3, 3) and shapes["conf.4.weight"] == (6 * 81, 256, 3, 3)
    assert shapes["vgg.31.weight"] == (1024, 512, 3, 3) and len(shapes) == 71 + 8


@pytest.mark.parametrize("kwargs", [dict(phase="val"), dict(phase="train", size=400), dict(phase="test", size=0),
                                    dict(phase="train", num_classes=1)])
def test_bad_phase_size_or_classes_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        build_ssd(**kwargs)


def test_mismatched_config_raises_value_error():
    with pytest.raises(ValueError):
        build_ssd("train", 300, 21, cfg=get_config("VOC", 512))


def test_module_prefixed_state_dict_loads(tmp_path, small):
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in small.state_dict().items()}, path)
    net, meta = load_model(str(path), "test")
    assert isinstance(net, SSD) and net.phase == "test" and net.width == 0.125
    for k, v in small.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    assert meta["class_names"] is None and meta["model_config"].num_classes == 21


def test_batch_norm_width_variant_builds_runs_and_reloads(tmp_path):
    torch.manual_seed(1)
    net = build_ssd("train", 300, 21, width=0.125, batch_norm=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.vgg) and len(net.extras_bn) == 8
    loc, conf, priors = net(torch.randn(2, 3, 300, 300))
    assert loc.shape == (2, 8732, 4) and conf.shape == (2, 8732, 21)
    (loc.sum() + conf.sum()).backward()                     # trains
    assert net.vgg[0].weight.grad is not None
    path = tmp_path / "bn.pth"
    torch.save(net.state_dict(), path)
    loaded, meta = load_model(str(path), "train")
    assert meta["model_config"].batch_norm and meta["model_config"].width == 0.125
    net.eval(), loaded.eval()
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        assert torch.allclose(net(x)[1], loaded(x)[1], atol=1e-5)


def test_coco_config_has_81_classes():
    assert coco["num_classes"] == 81 and voc["num_classes"] == 21


def test_s2_stem_halves_the_first_block_and_keeps_keys_and_output_sizes():
    vgg_net = build_ssd("train", 300, 6, width=0.125, batch_norm=True)
    s2_net = build_ssd("train", 300, 6, width=0.125, batch_norm=True, stem="s2").eval()
    # same keys; only conv1_1's kernel differs (7x7 stride 2 instead of 3x3)
    a, b = vgg_net.state_dict(), s2_net.state_dict()
    assert list(a) == list(b)
    assert [k for k in a if a[k].shape != b[k].shape] == ["vgg.0.weight"]
    assert b["vgg.0.weight"].shape[-2:] == (7, 7) and s2_net.vgg[0].stride == (2, 2)
    assert isinstance(s2_net.vgg[6], nn.Identity) and isinstance(vgg_net.vgg[6], nn.MaxPool2d)  # pool1
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        after_conv1_2 = x
        for layer in s2_net.vgg[:6]:
            after_conv1_2 = layer(after_conv1_2)
        feats = s2_net.features(x)
    assert after_conv1_2.shape[-1] == 150                            # conv1_2 runs at half resolution
    assert [f.shape[-1] for f in feats] == [38, 19, 10, 5, 3, 1]
    with pytest.raises(ValueError, match="stem"):
        build_ssd("train", 300, 6, stem="resnet")
