"""Matching and MultiBoxLoss against plain per-image transcriptions of ssd.pytorch (its bugs fixed)."""
import math

import pytest
import torch
import torch.nn.functional as F

from data.config import voc
from layers.box_utils import center_size
from layers.matching import match, match_targets, pad_targets
from layers.multibox_loss import MultiBoxLoss
from layers.prior_box import PriorBox

VAR = (0.1, 0.2)


# ----------------------------------------------------------------------------------------------------------
# Plain reference: ssd.pytorch's box_utils.match / encode / log_sum_exp and MultiBoxLoss.forward, one image
# at a time, with the two fixes the issue asks for (mask applied after the reshape; empty images allowed).
# ----------------------------------------------------------------------------------------------------------
def ref_point_form(p):
    return torch.cat([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], dim=1)


def ref_jaccard(a, b):
    max_xy = torch.min(a[:, None, 2:], b[None, :, 2:])
    min_xy = torch.max(a[:, None, :2], b[None, :, :2])
    inter = (max_xy - min_xy).clamp(min=0).prod(dim=2)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / (area_a + area_b - inter)


def ref_encode(matched, priors, variances):
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy = g_cxcy / (variances[0] * priors[:, 2:])
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    return torch.cat([g_cxcy, torch.log(g_wh) / variances[1]], dim=1)


def ref_match(threshold, truths, priors, variances, labels):
    num_priors = priors.shape[0]
    if truths.shape[0] == 0:   # ssd.pytorch raised IndexError here
        return torch.zeros(num_priors, 4), torch.zeros(num_priors, dtype=torch.long)
    overlaps = ref_jaccard(truths, ref_point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap.index_fill_(0, best_prior_idx, 2)
    for j in range(best_prior_idx.shape[0]):
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx].long() + 1
    conf[best_truth_overlap < threshold] = 0
    return ref_encode(matches, priors, variances), conf


def ref_log_sum_exp(x):
    x_max = x.max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1, keepdim=True)) + x_max


def ref_multibox_loss(loc_data, conf_data, priors, targets, num_classes, threshold=0.5, negpos_ratio=3):
    num, num_priors = loc_data.shape[0], priors.shape[0]
    loc_t = torch.zeros(num, num_priors, 4)
    conf_t = torch.zeros(num, num_priors, dtype=torch.long)
    for idx in range(num):
        loc_t[idx], conf_t[idx] = ref_match(threshold, targets[idx][:, :-1], priors, VAR, targets[idx][:, -1])
    pos = conf_t > 0
    num_pos = pos.sum(dim=1, keepdim=True)
    loss_l = F.smooth_l1_loss(loc_data[pos].view(-1, 4), loc_t[pos].view(-1, 4), reduction="sum")
    batch_conf = conf_data.view(-1, num_classes)
    loss_c = ref_log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))
    loss_c = loss_c.view(num, -1)          # the fix: reshape first ...
    loss_c[pos] = 0                        # ... then mask the positives
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_neg = torch.clamp(negpos_ratio * num_pos, max=pos.shape[1] - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)
    pos_idx = pos.unsqueeze(2).expand_as(conf_data)
    neg_idx = neg.unsqueeze(2).expand_as(conf_data)
    conf_p = conf_data[(pos_idx | neg_idx)].view(-1, num_classes)
    targets_weighted = conf_t[(pos | neg)]
    loss_c = F.cross_entropy(conf_p, targets_weighted, reduction="sum")
    n = num_pos.sum().float()
    return loss_l / n, loss_c / n


# ----------------------------------------------------------------------------------------------------------
# A hand-made case. Every box spans the full height, so IoU is the 1-D overlap of the x intervals.
# ----------------------------------------------------------------------------------------------------------
PRIOR_X = [(0.0, 0.2), (0.0, 0.25), (0.4, 0.5), (0.6, 0.7), (0.8, 1.0), (0.0, 0.45)]
GT = [
    (0.0, 0.2, 3),    # GT0: IoU 1.0 with p0, 0.8 with p1, 0.444 with p5 (below threshold)
    (0.35, 0.6, 7),   # GT1: best IoU 0.4 with p2 -> forced onto p2 despite the threshold
    (0.8, 0.95, 1),   # GT2: best prior p4 (IoU 0.75) ...
    (0.88, 1.0, 2),   # GT3: ... also best prior p4 (IoU 0.6): the later ground truth wins p4
]
EXPECTED_CONF = [4, 4, 8, 0, 3, 0]
EXPECTED_GT = [0, 0, 1, None, 3, None]


def hand_priors():
    return center_size(torch.tensor([[x0, 0.0, x1, 1.0] for x0, x1 in PRIOR_X]))


def hand_target():
    return torch.tensor([[x0, 0.0, x1, 1.0, float(lab)] for x0, x1, lab in GT])


def test_match_hand_made_case():
    priors, target = hand_priors(), hand_target()
    loc_t, conf_t = match_targets([target], priors, VAR, 0.5)
    assert conf_t.shape == (1, 6) and loc_t.shape == (1, 6, 4)
    assert conf_t[0].tolist() == EXPECTED_CONF
    for p, g in enumerate(EXPECTED_GT):
        if g is not None:
            expected = ref_encode(target[g:g + 1, :4], priors[p:p + 1], VAR)[0]
            assert torch.allclose(loc_t[0, p], expected, atol=1e-5), p


def test_match_threshold_is_inclusive_at_half():
    # IoU exactly 0.5 (0.25/0.5 in binary) counts as a match, as `overlap < 0.5 -> background` implies
    priors = center_size(torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.25, 1.0]]))
    target = torch.tensor([[0.0, 0.0, 0.5, 1.0, 0.0]])
    _, conf_t = match_targets([target], priors, VAR, 0.5)
    assert conf_t[0].tolist() == [1, 1]


def test_match_empty_image_is_all_background():
    priors = hand_priors()
    loc_t, conf_t = match_targets([torch.zeros(0, 5), hand_target()], priors, VAR, 0.5)
    assert conf_t[0].tolist() == [0] * 6
    assert torch.isfinite(loc_t).all()
    assert conf_t[1].tolist() == EXPECTED_CONF
    _, conf_all_empty = match_targets([torch.zeros(0, 5)] * 2, priors, VAR, 0.5)
    assert conf_all_empty.sum() == 0


def test_pad_targets_shapes_and_mask():
    padded, valid = pad_targets([torch.ones(2, 5), torch.zeros(0, 5), torch.ones(3, 5)], torch.device("cpu"))
    assert padded.shape == (3, 3, 5)
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]


def random_targets(counts, generator, num_labels=20):
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=generator) * 0.7
        wh = 0.03 + torch.rand(n, 2, generator=generator) * 0.4
        lab = torch.randint(0, num_labels, (n, 1), generator=generator).float()
        out.append(torch.cat([xy, (xy + wh).clamp(max=1.0), lab], dim=1))
    return out


def test_batched_match_equals_per_image_reference():
    g = torch.Generator().manual_seed(0)
    priors = PriorBox(voc).forward()
    targets = random_targets([1, 5, 0, 12], g) + [hand_target()]
    loc_t, conf_t = match_targets(targets, priors, VAR, 0.5)
    for b, t in enumerate(targets):
        ref_loc, ref_conf = ref_match(0.5, t[:, :4], priors, VAR, t[:, 4])
        assert torch.equal(conf_t[b], ref_conf), b
        pos = ref_conf > 0
        assert torch.allclose(loc_t[b][pos], ref_loc[pos], atol=1e-5), b
    assert (conf_t[2] == 0).all()


def test_match_direct_call_with_padding():
    priors = hand_priors()
    t = hand_target()
    truths = torch.zeros(2, 6, 4)
    labels = torch.zeros(2, 6)
    valid = torch.zeros(2, 6, dtype=torch.bool)
    truths[1, :4], labels[1, :4], valid[1, :4] = t[:, :4], t[:, 4], True
    # padding rows hold a box identical to p3: they must not be matched
    truths[:, 4:] = torch.tensor([0.6, 0.0, 0.7, 1.0])
    _, conf_t = match(truths, labels, valid, priors, VAR, 0.5)
    assert conf_t[0].tolist() == [0] * 6
    assert conf_t[1].tolist() == EXPECTED_CONF


# ----------------------------------------------------------------------------------------------------------
# MultiBoxLoss
# ----------------------------------------------------------------------------------------------------------
def test_loss_hand_computed_with_uniform_logits():
    # one image, 6 priors, 9 classes, all logits 0: every prior's CE is log(9).
    priors, target = hand_priors(), hand_target()
    loc_p = torch.zeros(1, 6, 4)
    conf_p = torch.zeros(1, 6, 9)
    loss_l, loss_c = MultiBoxLoss(9)((loc_p, conf_p, priors), [target])
    num_pos = 4                                    # p0, p1, p2, p4
    num_neg = min(3 * num_pos, 6 - 1) - 0          # clamp(3 * 4, max=5) = 5 ranks, only 2 real negatives
    assert num_neg == 5
    expected_c = (4 + 2) * math.log(9) / num_pos   # positives + both negatives
    loc_t, _ = match_targets([target], priors, VAR, 0.5)
    pos = torch.tensor(EXPECTED_CONF) > 0
    expected_l = F.smooth_l1_loss(torch.zeros(4, 4), loc_t[0][pos], reduction="sum") / num_pos
    assert loss_c.item() == pytest.approx(expected_c, rel=1e-5)
    assert loss_l.item() == pytest.approx(expected_l.item(), rel=1e-5)


def test_loss_matches_reference_on_hand_made_case():
    g = torch.Generator().manual_seed(3)
    priors, target = hand_priors(), hand_target()
    loc_p = torch.randn(1, 6, 4, generator=g)
    conf_p = torch.randn(1, 6, 9, generator=g) * 2
    ours = MultiBoxLoss(9)((loc_p, conf_p, priors), [target])
    ref = ref_multibox_loss(loc_p, conf_p, priors, [target], 9)
    assert ours[0].item() == pytest.approx(ref[0].item(), rel=1e-5)
    assert ours[1].item() == pytest.approx(ref[1].item(), rel=1e-5)


def test_loss_matches_reference_on_ssd300_priors():
    g = torch.Generator().manual_seed(4)
    priors = PriorBox(voc).forward()
    targets = random_targets([3, 1, 7], g)
    loc_p = torch.randn(3, priors.shape[0], 4, generator=g)
    conf_p = torch.randn(3, priors.shape[0], 21, generator=g) * 3
    ours = MultiBoxLoss(21)((loc_p, conf_p, priors), targets)
    ref = ref_multibox_loss(loc_p, conf_p, priors, targets, 21)
    assert ours[0].item() == pytest.approx(ref[0].item(), rel=1e-5)
    assert ours[1].item() == pytest.approx(ref[1].item(), rel=1e-5)
    # DataParallel-style priors (concatenated per replica) are cut to the prediction's length
    ours_dp = MultiBoxLoss(21)((loc_p, conf_p, torch.cat([priors, priors])), targets)
    assert ours_dp[1].item() == pytest.approx(ref[1].item(), rel=1e-5)


def test_empty_image_in_batch_gives_same_finite_loss():
    g = torch.Generator().manual_seed(5)
    priors, target = hand_priors(), hand_target()
    loc_p = torch.randn(2, 6, 4, generator=g)
    conf_p = torch.randn(2, 6, 9, generator=g)
    both = MultiBoxLoss(9)((loc_p, conf_p, priors), [target, torch.zeros(0, 5)])
    alone = MultiBoxLoss(9)((loc_p[:1], conf_p[:1], priors), [target])
    # an image without ground truth has no positives and hence (3:1) no mined negatives
    assert torch.isfinite(both[0]) and torch.isfinite(both[1])
    assert both[0].item() == pytest.approx(alone[0].item(), rel=1e-6)
    assert both[1].item() == pytest.approx(alone[1].item(), rel=1e-6)
    ref = ref_multibox_loss(loc_p, conf_p, priors, [target, torch.zeros(0, 5)], 9)
    assert both[1].item() == pytest.approx(ref[1].item(), rel=1e-5)


def test_fully_empty_batch_gives_finite_loss_and_backward():
    priors = hand_priors()
    loc_p = torch.randn(2, 6, 4, requires_grad=True)
    conf_p = torch.randn(2, 6, 9, requires_grad=True)
    loss_l, loss_c = MultiBoxLoss(9)((loc_p, conf_p, priors), [torch.zeros(0, 5), torch.zeros(0, 5)])
    assert torch.isfinite(loss_l) and torch.isfinite(loss_c)
    assert loss_l.item() == 0.0 and loss_c.item() == 0.0
    (loss_l + loss_c).backward()
    assert torch.isfinite(conf_p.grad).all() and torch.isfinite(loc_p.grad).all()


@pytest.mark.parametrize("box", [[0.3, 0.2, 0.3, 0.6], [0.1, 0.5, 0.4, 0.5]])
def test_degenerate_ground_truth_gives_finite_loss_and_grads(box):
    priors = PriorBox(voc).forward()
    target = torch.tensor([box + [4.0], [0.1, 0.1, 0.5, 0.6, 2.0]])
    loc_p = torch.zeros(1, priors.shape[0], 4, requires_grad=True)
    conf_p = torch.zeros(1, priors.shape[0], 21, requires_grad=True)
    loss_l, loss_c = MultiBoxLoss(21)((loc_p, conf_p, priors), [target])
    assert torch.isfinite(loss_l) and torch.isfinite(loss_c)
    (loss_l + loss_c).backward()
    assert torch.isfinite(loc_p.grad).all() and torch.isfinite(conf_p.grad).all()


def test_backward_reaches_positives_and_mined_negatives_only():
    g = torch.Generator().manual_seed(6)
    priors = hand_priors()
    target = hand_target()[1:2]           # GT1 alone: one positive (p2, forced), five candidate negatives
    conf = torch.randn(1, 6, 9, generator=g)
    conf[0, [3, 4], 0] = 10.0             # p3, p4: easy negatives (confident background), not mined at 3:1
    conf_p = conf.clone().requires_grad_(True)
    loc_p = torch.randn(1, 6, 4, generator=g, requires_grad=True)
    loss_l, loss_c = MultiBoxLoss(9)((loc_p, conf_p, priors), [target])
    (loss_l + loss_c).backward()
    assert (loc_p.grad[0].abs().sum(dim=1) > 0).tolist() == [False, False, True, False, False, False]
    assert (conf_p.grad[0].abs().sum(dim=1) > 0).tolist() == [True, True, True, False, False, True]
    ref = ref_multibox_loss(loc_p.detach(), conf, priors, [target], 9)
    assert loss_c.item() == pytest.approx(ref[1].item(), rel=1e-5)
    assert loss_l.item() == pytest.approx(ref[0].item(), rel=1e-5)
