"""The hot path does no per-image (or per-class) host interaction.

On a CPU-only machine "device" work is checked on the ``meta`` device: meta tensors have shapes but no values,
so any op that needs a value on the host (``nonzero``, boolean-mask indexing, ``.item()``, ``.cpu()``) raises.
Cross-device copies are counted with a dispatch mode, so a copy per image shows up however it is spelled.
"""
from typing import List, Tuple

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from layers.matching import pad_targets
from layers.multibox_loss import MultiBoxLoss
from ssd import build_ssd
from utils.inference.predictor import Predictor, detections_to_pixels

META = torch.device("meta")


class CrossDeviceCopies(TorchDispatchMode):
    """Records ``(src device, dst device, src dtype, numel)`` of every copy between two devices."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: List[Tuple[torch.device, torch.device, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            src, dst = args[0], torch.device(kwargs.get("device") or args[0].device)
            if dst != src.device:
                self.copies.append((src.device, dst, src.dtype, src.numel()))
        elif func is torch.ops.aten.copy_.default:
            dst, src = args[0], args[1]
            if isinstance(src, torch.Tensor) and dst.device != src.device:
                self.copies.append((src.device, dst.device, src.dtype, src.numel()))
        return func(*args, **kwargs)


def random_targets(counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * 0.5
        wh = torch.rand(n, 2, generator=g) * 0.4 + 0.05
        lab = torch.randint(0, 20, (n, 1), generator=g).float()
        out.append(torch.cat([xy, xy + wh, lab], dim=1))
    return out


# ---------------------------------------------------------------------------------------------------------
# matching: one host->device copy per batch
# ---------------------------------------------------------------------------------------------------------

def test_pad_targets_moves_a_batch_of_8_in_one_host_to_device_copy():
    targets = random_targets([3, 1, 0, 5, 2, 2, 4, 1])
    with CrossDeviceCopies() as rec:
        padded, valid = pad_targets(targets, META)
    assert len(rec.copies) == 1, rec.copies
    src, dst, _, _ = rec.copies[0]
    assert (src.type, dst.type) == ("cpu", "meta")
    assert padded.shape == (8, 5, 5) and valid.shape == (8, 5)
    assert padded.device == META and valid.device == META and valid.dtype == torch.bool


def test_pad_targets_values_equal_a_per_image_fill():
    targets = random_targets([3, 0, 5, 1])
    targets[2] = targets[2].double()            # any float dtype is converted to the default dtype
    padded, valid = pad_targets(targets, torch.device("cpu"))
    ref = torch.zeros(4, 5, 5)
    ref_valid = torch.zeros(4, 5, dtype=torch.bool)
    for b, t in enumerate(targets):
        ref[b, : len(t)] = t.float()
        ref_valid[b, : len(t)] = True
    assert padded.dtype == torch.float32 and padded.is_contiguous()
    assert torch.equal(padded, ref) and torch.equal(valid, ref_valid)


def test_pad_targets_all_empty_and_empty_batch_keep_one_padding_row():
    padded, valid = pad_targets([torch.zeros(0, 5), torch.zeros(0, 5)], torch.device("cpu"))
    assert padded.shape == (2, 1, 5) and not valid.any() and not padded.any()
    padded, valid = pad_targets([], torch.device("cpu"))
    assert padded.shape == (0, 1, 5) and valid.shape == (0, 1)


# ---------------------------------------------------------------------------------------------------------
# loss: no value ever needed on the host (so no device sync), forward and backward
# ---------------------------------------------------------------------------------------------------------

def test_matching_and_loss_run_on_a_device_without_reading_values_back():
    num_priors, num_classes = 64, 4
    priors = torch.rand(num_priors, 4, device=META)
    loc = torch.randn(8, num_priors, 4, device=META, requires_grad=True)
    conf = torch.randn(8, num_priors, num_classes, device=META, requires_grad=True)
    targets = random_targets([3, 1, 0, 5, 2, 2, 4, 1])   # on the CPU, as the DataLoader gives them
    with CrossDeviceCopies() as rec:
        loss_l, loss_c = MultiBoxLoss(num_classes)((loc, conf, priors), targets)
        (loss_l + loss_c).backward()
    # the only transfer is the targets batch going to the device; nothing comes back
    assert [(s.type, d.type) for s, d, _, _ in rec.copies] == [("cpu", "meta")]
    assert loss_l.shape == () and loss_c.shape == ()
    assert loc.grad.shape == loc.shape and conf.grad.shape == conf.shape


def test_loss_from_targets_has_no_data_dependent_shapes():
    # boolean-mask indexing (loc[pos], ce[pos | neg]) needs nonzero, which meta tensors cannot run
    conf_t = torch.zeros(2, 32, dtype=torch.long, device=META)
    loc_t = torch.zeros(2, 32, 4, device=META)
    loc = torch.randn(2, 32, 4, device=META, requires_grad=True)
    conf = torch.randn(2, 32, 3, device=META, requires_grad=True)
    loss_l, loss_c = MultiBoxLoss(3).loss_from_targets(loc, conf, loc_t, conf_t)
    (loss_l + loss_c).backward()
    assert conf.grad.shape == conf.shape


def test_masked_loss_ignores_non_finite_values_at_unselected_priors():
    torch.manual_seed(0)
    loc = torch.randn(1, 6, 4, requires_grad=True)
    conf = torch.randn(1, 6, 3, requires_grad=True)
    conf_t = torch.tensor([[1, 0, 0, 0, 0, 0]])
    loc_t = torch.randn(1, 6, 4)
    clean_l, clean_c = MultiBoxLoss(3, neg_pos=1).loss_from_targets(loc, conf, loc_t, conf_t)
    loc_t[0, 1:] = torch.tensor([float("inf"), float("nan"), -float("inf"), float("nan")])
    loss_l, loss_c = MultiBoxLoss(3, neg_pos=1).loss_from_targets(loc, conf, loc_t, conf_t)
    (loss_l + loss_c).backward()
    assert torch.equal(loss_l, clean_l) and torch.equal(loss_c, clean_c)
    assert torch.isfinite(loc.grad).all() and torch.isfinite(conf.grad).all()
    assert (loc.grad[0, 1:] == 0).all()


# ---------------------------------------------------------------------------------------------------------
# inference: uint8 to the device, normalise there; one device->host copy of the detections
# ---------------------------------------------------------------------------------------------------------

def frames(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(120, 160), (300, 300), (77, 41)]]


def test_predict_gives_the_same_detections_as_preprocess_then_predict_batch():
    torch.manual_seed(0)
    net = build_ssd("test", 300, 3, width=0.125).eval()
    pred = Predictor(net, ["a", "b"], 300)
    imgs = frames()
    sizes = [im.shape[:2] for im in imgs]
    ref = pred.predict_batch(pred.preprocess(imgs), sizes)
    got = pred.predict(imgs)
    assert sum(len(d) for d in ref) > 0
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g.boxes, r.boxes)
        np.testing.assert_array_equal(g.scores, r.scores)
        np.testing.assert_array_equal(g.labels, r.labels)
        assert g.boxes.dtype == np.float32 and g.labels.dtype == np.int64


def test_predict_sends_uint8_frames_to_the_device_and_normalises_there(monkeypatch):
    pred = Predictor(lambda x: x, ["a"], 32, device=META, channels_last=False)
    seen = {}

    def fake_predict_batch(x, image_sizes):
        seen["x"], seen["sizes"] = x, image_sizes
        return []

    monkeypatch.setattr(pred, "predict_batch", fake_predict_batch)
    imgs = frames()
    with CrossDeviceCopies() as rec:
        pred.predict(imgs)
    batch_copies = [dtype for _, dst, dtype, numel in rec.copies if numel == len(imgs) * 32 * 32 * 3]
    assert batch_copies == [torch.uint8]     # the batch crossed once, as uint8 (4x fewer bytes than float32)
    x = seen["x"]
    assert x.device == META and x.dtype == torch.float32 and x.shape == (3, 3, 32, 32)
    assert seen["sizes"] == [(120, 160), (300, 300), (77, 41)]


def reference_detections_to_pixels(out, image_sizes, score_threshold=0.0):
    """Image by image, everything in float64 then rounded: the definition, not the fast path."""
    res = []
    for b in range(out.shape[0]):
        h, w = image_sizes[b]
        o = out[b].double()
        c, k = (o[..., 0] > score_threshold).nonzero(as_tuple=True)
        rows = o[c, k]
        boxes = rows[:, 1:].clamp(0, 1) * torch.tensor([w, h, w, h], dtype=torch.float64)
        res.append((boxes.float().numpy(), rows[:, 0].float().numpy(), c.numpy()))
    return res


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_detections_to_pixels_equals_the_per_image_definition(dtype):
    g = torch.Generator().manual_seed(1)
    out = torch.rand(3, 4, 6, 5, generator=g) * 1.4 - 0.2
    out[1, ..., 0] = -1.0                               # an image without detections
    out = out.to(dtype)
    sizes = [(100, 200), (30, 40), (77, 41)]
    got = detections_to_pixels(out, sizes, score_threshold=0.3)
    ref = reference_detections_to_pixels(out, sizes, 0.3)
    assert len(got) == 3 and len(got[1]) == 0 and got[1].boxes.shape == (0, 4)
    for d, (boxes, scores, labels) in zip(got, ref):
        np.testing.assert_allclose(d.boxes, boxes, rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(d.scores, scores)
        np.testing.assert_array_equal(d.labels, labels)
        assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.labels.dtype == np.int64


def test_detections_to_pixels_of_an_empty_batch_is_an_empty_list():
    assert detections_to_pixels(torch.zeros(0, 3, 4, 5), []) == []


def test_detections_to_pixels_copies_to_the_host_once(monkeypatch):
    calls = {"cpu": 0, "tolist": 0, "item": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _orig=original, **k):
            calls[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    out = torch.rand(4, 3, 5, 5)
    dets = detections_to_pixels(out, [(10, 20)] * 4, score_threshold=0.5)
    assert len(dets) == 4
    assert calls == {"cpu": 1, "tolist": 0, "item": 0}
