"""Box conversions, IoU and the SSD box coding (encode/decode with variances 0.1/0.2)."""
import math

import pytest
import torch

from layers.box_utils import center_size, decode, encode, jaccard, point_form

VAR = (0.1, 0.2)


def random_corner_boxes(n, generator, min_size=0.02):
    xy = torch.rand(n, 2, generator=generator) * 0.8
    wh = min_size + torch.rand(n, 2, generator=generator) * 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_point_form_and_center_size_are_inverse():
    cs = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.3, 0.05, 0.1]])
    pf = point_form(cs)
    assert torch.allclose(pf, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.075, 0.25, 0.125, 0.35]]))
    assert torch.allclose(center_size(pf), cs)


def test_jaccard_by_hand():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    iou = jaccard(a, b)
    assert iou.shape == (1, 3)
    assert iou[0].tolist() == pytest.approx([0.0625 / (0.25 + 0.25 - 0.0625), 0.0, 1.0])


def test_encode_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[0.42, 0.4, 0.62, 0.8]])          # centre (0.52, 0.6), size (0.2, 0.4)
    t = encode(gt, prior, VAR)[0].tolist()
    assert t == pytest.approx([0.02 / (0.1 * 0.2), 0.1 / (0.1 * 0.2), 0.0, math.log(2.0) / 0.2], abs=1e-5)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    gt = random_corner_boxes(500, g)
    priors = center_size(random_corner_boxes(500, g))
    loc = encode(gt, priors, VAR)
    assert torch.allclose(decode(loc, priors, VAR), gt, atol=1e-5)
    # and the other way round: decode then encode recovers the offsets
    offsets = torch.randn(500, 4, generator=g)
    assert torch.allclose(encode(decode(offsets, priors, VAR), priors, VAR), offsets, atol=1e-4)


def test_encode_decode_batched_shapes():
    g = torch.Generator().manual_seed(1)
    priors = center_size(random_corner_boxes(7, g))
    gt = torch.stack([random_corner_boxes(7, g) for _ in range(3)])   # [B, P, 4]
    loc = encode(gt, priors, VAR)
    assert loc.shape == (3, 7, 4)
    assert torch.allclose(loc[1], encode(gt[1], priors, VAR))
    assert torch.allclose(decode(loc, priors, VAR), gt, atol=1e-5)


@pytest.mark.parametrize("box", [[0.3, 0.2, 0.3, 0.6], [0.3, 0.2, 0.5, 0.2], [0.4, 0.4, 0.4, 0.4]])
def test_degenerate_box_encodes_finite(box):
    prior = torch.tensor([[0.4, 0.4, 0.1, 0.1]])
    t = encode(torch.tensor([box]), prior, VAR)
    assert torch.isfinite(t).all()
