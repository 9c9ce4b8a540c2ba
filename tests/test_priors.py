"""PriorBox: golden values and order identical to ssd.pytorch, and the SSD512 priors of the paper."""
from math import sqrt

import pytest
import torch

from data.config import coco, coco512, get_config, voc, voc512
from layers.prior_box import PriorBox, num_priors_per_location


def reference_priors(cfg):
    """The prior recipe written out independently (vectorised), before clipping: [P, 4] cxcywh, float64."""
    out = []
    for k, f in enumerate(cfg["feature_maps"]):
        f_k = cfg["min_dim"] / cfg["steps"][k]
        s_k = cfg["min_sizes"][k] / cfg["min_dim"]
        s_big = sqrt(s_k * cfg["max_sizes"][k] / cfg["min_dim"])
        sizes = [(s_k, s_k), (s_big, s_big)]
        for ar in cfg["aspect_ratios"][k]:
            sizes += [(s_k * sqrt(ar), s_k / sqrt(ar)), (s_k / sqrt(ar), s_k * sqrt(ar))]
        rows, cols = torch.meshgrid(torch.arange(f, dtype=torch.float64), torch.arange(f, dtype=torch.float64),
                                    indexing="ij")
        cx = ((cols + 0.5) / f_k).reshape(-1, 1).expand(-1, len(sizes))   # [f*f, A]
        cy = ((rows + 0.5) / f_k).reshape(-1, 1).expand(-1, len(sizes))
        wh = torch.tensor(sizes, dtype=torch.float64).expand(f * f, -1, -1)  # [f*f, A, 2]
        out.append(torch.stack([cx, cy, wh[..., 0], wh[..., 1]], dim=-1).reshape(-1, 4))
    return torch.cat(out)


@pytest.mark.parametrize("cfg,count", [(voc, 8732), (coco, 8732), (voc512, 24564), (coco512, 24564)])
def test_prior_count(cfg, count):
    priors = PriorBox(cfg).forward()
    assert priors.shape == (count, 4)
    assert priors.dtype == torch.float32
    anchors = num_priors_per_location(cfg)
    assert sum(f * f * a for f, a in zip(cfg["feature_maps"], anchors)) == count


def test_boxes_per_location():
    assert num_priors_per_location(voc) == [4, 6, 6, 6, 4, 4]
    assert num_priors_per_location(voc512) == [4, 6, 6, 6, 6, 4, 4]


def test_ssd300_voc_golden_values():
    p = PriorBox(voc).forward().double()
    # first cell (row 0, col 0) of conv4_3: centre 0.5 / 37.5
    c = 0.5 / 37.5
    assert torch.allclose(p[0], torch.tensor([c, c, 0.1, 0.1], dtype=torch.float64), atol=1e-6)
    assert abs(c - 0.013333) < 1e-6
    assert torch.allclose(p[1], torch.tensor([c, c, sqrt(0.1 * 0.2), sqrt(0.1 * 0.2)], dtype=torch.float64),
                          atol=1e-6)
    assert torch.allclose(p[2, 2:], torch.tensor([0.1 * sqrt(2), 0.1 / sqrt(2)], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(p[3, 2:], torch.tensor([0.1 / sqrt(2), 0.1 * sqrt(2)], dtype=torch.float64), atol=1e-6)
    # last map (1x1, f_k = 300/300): s_k = 0.88, s' = sqrt(0.88 * 1.05); the ar=2 boxes clip w (or h) to 1.0
    s, s_big = 264 / 300, sqrt(264 / 300 * 315 / 300)
    last = torch.tensor([[0.5, 0.5, s, s],
                         [0.5, 0.5, s_big, s_big],
                         [0.5, 0.5, 1.0, s / sqrt(2)],
                         [0.5, 0.5, s / sqrt(2), 1.0]], dtype=torch.float64)
    assert torch.allclose(p[-4:], last, atol=1e-6)
    assert abs(p[-2, 3].item() - 0.622) < 1e-3   # ssd.pytorch's clipped prior: w = 1.0, h ~ 0.622


def test_ssd512_golden_values():
    p = PriorBox(voc512).forward().double()
    c = 0.5 / 64
    assert torch.allclose(p[0], torch.tensor([c, c, 0.07, 0.07], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(p[1, 2:], torch.full((2,), sqrt(0.07 * 0.15), dtype=torch.float64), atol=1e-6)
    s = 0.9
    assert torch.allclose(p[-4:], torch.tensor([[0.5, 0.5, s, s],
                                                [0.5, 0.5, sqrt(0.9 * 1.05), sqrt(0.9 * 1.05)],
                                                [0.5, 0.5, 1.0, s / sqrt(2)],
                                                [0.5, 0.5, s / sqrt(2), 1.0]], dtype=torch.float64), atol=1e-6)
    # COCO512 starts at 0.04 of the image (the Caffe recipe)
    assert PriorBox(coco512).forward()[0, 2].item() == pytest.approx(0.04, abs=1e-6)


def test_order_is_row_col_anchor():
    p = PriorBox(voc).forward()
    f_k = 37.5
    # index (i * 38 + j) * 4 + a on conv4_3
    i, j, a = 3, 5, 2
    idx = (i * 38 + j) * 4 + a
    assert p[idx, 0].item() == pytest.approx((j + 0.5) / f_k, abs=1e-6)
    assert p[idx, 1].item() == pytest.approx((i + 0.5) / f_k, abs=1e-6)
    assert p[idx, 2].item() == pytest.approx(0.1 * sqrt(2), abs=1e-6)
    # moving one column changes cx only; moving one row changes cy only
    assert p[4, 0] > p[0, 0] and p[4, 1] == p[0, 1]
    assert p[38 * 4, 1] > p[0, 1] and p[38 * 4, 0] == p[0, 0]
    # the second map (19x19, 6 anchors) starts right after 38*38*4 priors, at f_k = 18.75
    start = 38 * 38 * 4
    assert p[start].tolist() == pytest.approx([0.5 / 18.75, 0.5 / 18.75, 0.2, 0.2], abs=1e-6)


@pytest.mark.parametrize("cfg", [voc, coco, voc512, coco512])
def test_matches_independent_recipe_with_clip(cfg):
    p = PriorBox(cfg).forward()
    ref = reference_priors(cfg).clamp(0, 1).float()
    assert torch.allclose(p, ref, atol=1e-6)
    assert p.min() >= 0 and p.max() <= 1


def test_no_clip_keeps_out_of_range_sizes():
    cfg = get_config("VOC", 300)
    cfg["clip"] = False
    p = PriorBox(cfg).forward()
    assert p[-2, 2].item() == pytest.approx(0.88 * sqrt(2), abs=1e-6)


def test_bad_variance_rejected():
    cfg = get_config("VOC", 300)
    cfg["variance"] = [0.1, 0.0]
    with pytest.raises(ValueError):
        PriorBox(cfg)
