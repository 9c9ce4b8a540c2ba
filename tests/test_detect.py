"""Detect against a brute-force per-class greedy NMS written plainly (Python loops, IoU by hand)."""
import math

import pytest
import torch

import layers.detection as detection
from layers.detection import Detect, greedy_nms

VAR = (0.1, 0.2)


def plain_decode(loc, prior):
    cx = prior[0] + loc[0] * VAR[0] * prior[2]
    cy = prior[1] + loc[1] * VAR[0] * prior[3]
    w = prior[2] * math.exp(loc[2] * VAR[1])
    h = prior[3] * math.exp(loc[3] * VAR[1])
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def plain_iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def brute_force_detect(loc, conf, priors, top_k=200, conf_thresh=0.01, nms_thresh=0.45, nms_top_k=200):
    """ssd.pytorch's Detect semantics: per image, per class > 0: scores > conf_thresh, best nms_top_k,
    greedy NMS (drop IoU > nms_thresh against a kept box), at most top_k rows."""
    batch, num_priors, num_classes = conf.shape
    out = torch.zeros(batch, num_classes, top_k, 5)
    loc_l, conf_l, pri_l = loc.tolist(), conf.tolist(), priors.tolist()
    for i in range(batch):
        boxes = [plain_decode(loc_l[i][p], pri_l[p]) for p in range(num_priors)]
        for cl in range(1, num_classes):
            cand = [(conf_l[i][p][cl], p) for p in range(num_priors) if conf_l[i][p][cl] > conf_thresh]
            cand.sort(key=lambda sp: -sp[0])
            kept = []
            for score, p in cand[:nms_top_k]:
                if all(plain_iou(boxes[p], boxes[q]) <= nms_thresh for _, q in kept):
                    kept.append((score, p))
            for r, (score, p) in enumerate(kept[:top_k]):
                out[i, cl, r] = torch.tensor([score] + boxes[p])
    return out


def random_inputs(seed, batch=2, num_priors=300, num_classes=5, loc_scale=1.0, logit_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    # priors crowded into a small area so that many decoded boxes overlap and NMS has work to do
    centers = 0.3 + 0.4 * torch.rand(num_priors, 2, generator=g)
    sizes = 0.05 + 0.3 * torch.rand(num_priors, 2, generator=g)
    priors = torch.cat([centers, sizes], dim=1)
    loc = torch.randn(batch, num_priors, 4, generator=g) * loc_scale
    conf = torch.softmax(torch.randn(batch, num_priors, num_classes, generator=g) * logit_scale, dim=-1)
    return loc, conf, priors


def assert_same_detections(ours, ref):
    assert ours.shape == ref.shape
    nonzero = ours[..., 0] > 0
    assert torch.equal(nonzero, ref[..., 0] > 0), "different detections kept"
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("seed,loc_scale", [(0, 1.0), (1, 0.3), (2, 3.0)])
def test_detect_equals_brute_force(seed, loc_scale):
    loc, conf, priors = random_inputs(seed, loc_scale=loc_scale)
    ours = Detect(5, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    ref = brute_force_detect(loc, conf, priors)
    assert_same_detections(ours, ref)
    assert (ref[..., 0] > 0).sum() > 50          # the case is not trivial ...
    assert (ref[..., 0] > 0).sum() < (conf[..., 1:] > 0.01).sum()   # ... and NMS suppressed something


def test_nms_top_k_and_top_k_caps():
    # 500 candidates per class: only the best 200 enter NMS; then at most top_k = 7 survive per class
    loc, conf, priors = random_inputs(7, batch=1, num_priors=500, num_classes=3, loc_scale=0.5, logit_scale=0.5)
    ours = Detect(3, 0, 7, 0.01, 0.45, VAR)(loc, conf, priors)
    ref = brute_force_detect(loc, conf, priors, top_k=7)
    assert ours.shape == (1, 3, 7, 5)
    assert_same_detections(ours, ref)
    assert (ours[0, 1:, :, 0] > 0).sum(dim=1).tolist() == [7, 7]
    full = Detect(3, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    assert_same_detections(full, brute_force_detect(loc, conf, priors))
    # NMS removed some of the 200 entrants, so boxes ranked 201..500 would show up if they had entered
    assert ((full[0, 1:, :, 0] > 0).sum(dim=1) < 200).all()
    assert ((conf[0, :, 1:] > 0.01).sum(dim=0) > 200).all()
    assert torch.equal(full[:, :, :7], ours)       # top_k keeps the head of each class list


def test_output_layout_background_zero_sorted_and_zero_tail():
    loc, conf, priors = random_inputs(11, batch=3)
    out = Detect(5, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    assert out.shape == (3, 5, 200, 5)
    assert (out[:, 0] == 0).all()
    scores = out[..., 0]
    assert (scores[..., 1:] <= scores[..., :-1]).all()       # descending per class
    count = (scores > 0).sum(dim=2, keepdim=True)
    rank = torch.arange(200).view(1, 1, -1)
    assert (out[rank.expand_as(scores) >= count] == 0).all()  # zero rows after the last detection
    assert ((scores > 0) == (rank < count)).all()


def test_conf_thresh_is_strict_and_nothing_above_gives_zeros():
    loc, conf, priors = random_inputs(12, batch=1, num_classes=3)
    conf = torch.full_like(conf, 0.01)   # nothing strictly above 0.01
    out = Detect(3, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    assert out.shape == (1, 3, 200, 5) and (out == 0).all()


def test_classes_are_suppressed_independently_even_far_outside_the_image():
    # Two identical-shaped boxes in different classes must both survive. Unclipped decoded boxes can lie far
    # outside [0, 1]; an NMS trick that offsets boxes per class by (max coordinate + 1) assumes x, y >= 0 and
    # would let these two collide (the second is the first shifted by -2).
    priors = torch.tensor([[-0.5, -0.5, 3.0, 3.0], [-2.5, -2.5, 3.0, 3.0]])
    loc = torch.zeros(1, 2, 4)
    conf = torch.tensor([[[0.1, 0.9, 0.0], [0.2, 0.0, 0.8]]])
    out = Detect(3, 0, 10, 0.01, 0.45, VAR)(loc, conf, priors)
    assert out[0, 1, 0, 0].item() == pytest.approx(0.9)
    assert out[0, 2, 0, 0].item() == pytest.approx(0.8)
    assert_same_detections(out, brute_force_detect(loc, conf, priors, top_k=10))


def test_images_are_suppressed_independently():
    loc, conf, priors = random_inputs(13, batch=1)
    both = Detect(5, 0, 200, 0.01, 0.45, VAR)(torch.cat([loc, loc]), torch.cat([conf, conf]), priors)
    single = Detect(5, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    assert torch.equal(both[0], single[0]) and torch.equal(both[1], single[0])


def test_many_groups_keep_nms_decisions_near_the_threshold():
    # 8 images x 80 classes = 640 NMS groups. Two small boxes in the last group overlap with IoU 0.4504 (> 0.45:
    # the second is suppressed); a float32 per-group coordinate offset (~1300 here) blurs that IoU by ~1e-2.
    num_classes, h = 81, 0.004504
    priors = torch.tensor([[0.305, 0.305, 0.01, 0.01],        # box [0.30, 0.30, 0.31, 0.31]
                           [0.305, 0.30 + h / 2, 0.01, h],     # box [0.30, 0.30, 0.31, 0.30 + h]
                           [0.5, 0.5, 1.0, 1.0]])              # box [0, 0, 1, 1]
    loc = torch.zeros(8, 3, 4)
    conf = torch.zeros(8, 3, num_classes)
    conf[7, 0, 80], conf[7, 1, 80] = 0.9, 0.8
    conf[0, 2, 1] = 0.5
    ours = Detect(num_classes, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    ref = brute_force_detect(loc, conf, priors)
    assert (ref[7, 80, :, 0] > 0).sum() == 1
    assert_same_detections(ours, ref)
    # and with dense random inputs over many groups
    g = torch.Generator().manual_seed(33)
    priors = torch.cat([0.3 + 0.05 * torch.rand(40, 2, generator=g), 0.01 + 0.01 * torch.rand(40, 2, generator=g)], 1)
    loc = torch.randn(8, 40, 4, generator=g) * 0.3
    conf = torch.rand(8, 40, num_classes, generator=g) * 0.0102
    ours = Detect(num_classes, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    assert_same_detections(ours, brute_force_detect(loc, conf, priors))


def test_keep_top_k_caps_detections_per_image():
    loc, conf, priors = random_inputs(14, batch=2)
    full = Detect(5, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    capped = Detect(5, 0, 200, 0.01, 0.45, VAR, keep_top_k=10)(loc, conf, priors)
    assert capped.shape == full.shape
    for b in range(2):
        kept = capped[b][capped[b, ..., 0] > 0]
        assert kept.shape[0] == 10
        best = full[b, ..., 0][full[b, ..., 0] > 0].sort(descending=True).values[:10]
        assert torch.equal(kept[:, 0].sort(descending=True).values, best)
    scores = capped[..., 0]
    assert (scores[..., 1:] <= scores[..., :-1]).all()       # still sorted with zeros at the tail
    # each kept row is one of the uncapped rows of the same class
    for b, c, r in (scores > 0).nonzero().tolist():
        assert (full[b, c] == capped[b, c, r]).all(dim=1).any()
    # a cap above the number of detections changes nothing
    loose = Detect(5, 0, 200, 0.01, 0.45, VAR, keep_top_k=100000)(loc, conf, priors)
    assert torch.equal(loose, full)


def test_default_keep_top_k_is_off():
    assert Detect(21).keep_top_k is None


def test_bad_nms_threshold_rejected():
    with pytest.raises(ValueError):
        Detect(21, 0, 200, 0.01, 0.0)


def chain_inputs(steps, scores):
    """Boxes 0.02 wide along a line, box i+1 shifted right by ``steps[i]`` widths; ``scores [B, N, C]``."""
    n = len(steps) + 1
    cx = 0.1 + 0.02 * torch.cat([torch.zeros(1), torch.cumsum(torch.tensor(steps, dtype=torch.float64), 0)])
    priors = torch.stack([cx, torch.full((n,), 0.5, dtype=torch.float64),
                          torch.full((n,), 0.02, dtype=torch.float64), torch.full((n,), 0.1, dtype=torch.float64)],
                         dim=1).float()
    return torch.zeros(scores.shape[0], n, 4), scores, priors


def test_long_suppression_chain_keeps_every_other_box():
    # shift 0.3 widths: neighbours overlap with IoU 0.7 / 1.3 = 0.54 (> 0.45), boxes two apart 0.4 / 1.6 = 0.25.
    # Greedy NMS keeps boxes 0, 2, 4, ...: each decision depends on the one before, a chain through all 200 boxes.
    n = 200
    scores = torch.zeros(1, n, 3)
    scores[0, :, 1] = torch.linspace(0.9, 0.1, n)      # chain walked left to right
    scores[0, :, 2] = torch.linspace(0.1, 0.9, n)      # and right to left
    loc, conf, priors = chain_inputs([0.3] * (n - 1), scores)
    out = Detect(3, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    assert torch.equal(out[0, 1, :100, 0], scores[0, 0::2, 1])
    assert torch.equal(out[0, 2, :100, 0], scores[0, 1::2, 2].flip(0))
    assert (out[0, 1:, 100:] == 0).all()
    assert_same_detections(out, brute_force_detect(loc, conf, priors))


def test_random_suppression_chains_equal_brute_force():
    # steps between 0.1 and 0.5 widths: some neighbours suppress each other, some do not, some boxes two apart do;
    # random score orders give every image and class its own chains
    g = torch.Generator().manual_seed(21)
    n = 150
    steps = (0.1 + 0.4 * torch.rand(n - 1, generator=g)).tolist()
    scores = 0.02 + 0.9 * torch.rand(3, n, 4, generator=g)
    scores[0, :, 1] = torch.linspace(0.9, 0.1, n)
    loc, conf, priors = chain_inputs(steps, scores)
    out = Detect(4, 0, 200, 0.01, 0.45, VAR)(loc, conf, priors)
    ref = brute_force_detect(loc, conf, priors)
    assert_same_detections(out, ref)
    assert ((ref[:, 1:, :, 0] > 0).sum(dim=2) < n).all()    # every group suppressed something


def test_batch_above_torchvision_cpu_threshold_equals_images_one_by_one(monkeypatch):
    # 3 images x 20 classes x up to 200 candidates: well above the 4000 boxes at which torchvision's batched_nms
    # changes strategy on CPU; some (image, class) groups have no candidate at all
    loc, conf, priors = random_inputs(41, batch=3, num_priors=300, num_classes=21)
    conf[1, :, 5] = 0.0
    conf[2, :, 7:12] = 0.005
    candidates = (conf[..., 1:].topk(200, dim=1).values > 0.01).sum()
    assert candidates > 4000
    det = Detect(21, 0, 200, 0.01, 0.45, VAR)
    batched = det(loc, conf, priors)
    for i in range(3):
        assert torch.equal(batched[i], det(loc[i:i + 1], conf[i:i + 1], priors)[0])
    assert (batched[1, 5] == 0).all() and (batched[2, 7:12] == 0).all()
    assert (batched[0, 1:, 0, 0] > 0).all()
    # NMS in chunks of a few groups (as on CPU for large batches) gives the same result as one chunk
    monkeypatch.setattr(detection, "_CPU_PAIRS_PER_CHUNK", 3 * 200 * 200 + 1)
    assert torch.equal(det(loc, conf, priors), batched)
    monkeypatch.setattr(detection, "_CPU_PAIRS_PER_CHUNK", 1 << 30)
    assert torch.equal(det(loc, conf, priors), batched)
    assert_same_detections(batched[:1], brute_force_detect(loc[:1], conf[:1], priors))


def test_scores_exactly_at_conf_thresh_are_excluded_and_suppress_nothing():
    # three identical boxes; conf_thresh 0.25 is exact in float32
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 3)
    loc = torch.zeros(1, 3, 4)
    above = torch.nextafter(torch.tensor(0.25), torch.tensor(1.0)).item()
    conf = torch.tensor([[[0.0, 0.25, 0.25], [0.0, 0.25, above], [0.0, 0.1, 0.25]]])
    out = Detect(3, 0, 5, 0.25, 0.45, VAR)(loc, conf, priors)
    assert (out[0, 1] == 0).all()                       # only scores == conf_thresh: nothing
    assert out[0, 2, 0, 0].item() == above and (out[0, 2, 1:] == 0).all()
    # an invalid box ahead of a valid one (possible in greedy_nms's general input) does not suppress it
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]] * 3])
    keep = greedy_nms(boxes, torch.tensor([[False, True, True]]), 0.45)
    assert keep.tolist() == [[False, True, False]]


def plain_greedy(boxes, valid, thresh):
    kept = []
    for i in range(len(boxes)):
        if valid[i] and all(plain_iou(boxes[j], boxes[i]) <= thresh for j in kept):
            kept.append(i)
    return [i in kept for i in range(len(boxes))]


def test_greedy_nms_equals_sequential_greedy_per_group():
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(40, 60, 2, generator=g) * 0.3
    wh = 0.05 + 0.2 * torch.rand(40, 60, 2, generator=g)
    boxes = torch.cat([xy, xy + wh], dim=2)
    valid = torch.rand(40, 60, generator=g) > 0.2
    keep = greedy_nms(boxes, valid, 0.45)
    assert keep.shape == (40, 60) and keep.dtype == torch.bool
    expected = [plain_greedy(b, v, 0.45) for b, v in zip(boxes.tolist(), valid.tolist())]
    assert keep.tolist() == expected
    assert 0 < keep.sum() < valid.sum()
