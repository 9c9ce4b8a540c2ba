"""SSD augmentation and preprocessing: boxes stay valid, the crop constraints hold, preprocessing is THE formula."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.config import MEANS
from data.transforms import (CROP_MODES, BaseTransform, Expand, RandomMirror, RandomSampleCrop,
                                 SSDAugmentation, jaccard_numpy, normalize_uint8_batch, preprocess,
                                 preprocess_batch, resize_batch_uint8)


def _image(h=75, w=100, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _boxes():
    boxes = np.array([[0.10, 0.10, 0.45, 0.60], [0.40, 0.30, 0.95, 0.95], [0.70, 0.05, 0.78, 0.15]], np.float32)
    return boxes, np.array([0, 3, 1], np.float32)


def test_ssd_augmentation_keeps_boxes_inside_the_image_with_positive_area():
    img = _image()
    boxes, labels = _boxes()
    for seed in range(120):
        out, b, lab = SSDAugmentation(64, rng=np.random.RandomState(seed))(img, boxes, labels)
        assert out.shape == (64, 64, 3) and out.dtype == np.float32
        assert b.dtype == np.float32 and b.shape == (len(lab), 4)
        assert len(lab) >= 1  # a crop must keep at least one box when there are boxes
        assert (b >= 0).all() and (b <= 1).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert set(lab.tolist()) <= set(labels.tolist())


def test_crop_keeps_only_boxes_whose_centre_is_inside_and_clips_them():
    boxes = _boxes()[0] * np.array([100, 75, 100, 75], np.float32)
    labels = np.arange(3, dtype=np.float32)
    crop = RandomSampleCrop(rng=np.random.RandomState(1))
    seen_crop = 0
    for _ in range(200):
        drawn = crop.sample(75, 100, boxes)
        if drawn is None:
            continue
        seen_crop += 1
        rect, keep = drawn
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres[:, 0] > rect[0]) & (centres[:, 0] < rect[2])
                  & (centres[:, 1] > rect[1]) & (centres[:, 1] < rect[3]))
        np.testing.assert_array_equal(keep, inside)
        cb, cl = RandomSampleCrop.crop_boxes(boxes, labels, rect, keep)
        w, h = rect[2] - rect[0], rect[3] - rect[1]
        assert (cb >= 0).all() and (cb[:, 0::2] <= w).all() and (cb[:, 1::2] <= h).all()
        np.testing.assert_array_equal(cl, labels[keep])
    assert seen_crop > 100


@pytest.mark.parametrize("min_iou", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_min_iou_mode_is_enforced(min_iou):
    # one small and one large box: without the constraint most patches would overlap the boxes far less
    boxes = np.array([[10, 10, 30, 30], [5, 5, 95, 70]], np.float32)
    crop = RandomSampleCrop(modes=(min_iou,), rng=np.random.RandomState(0), max_modes=20)
    accepted = 0
    for _ in range(60):
        drawn = crop.sample(75, 100, boxes)
        if drawn is None:
            continue
        rect, keep = drawn
        accepted += 1
        assert jaccard_numpy(boxes[keep], rect).max() >= min_iou
    assert accepted > 0


def test_unconstrained_mode_accepts_low_overlap_patches():
    # the counterpart of the test above: in the "any" mode low IoU patches do occur
    boxes = np.array([[10, 10, 30, 30]], np.float32)
    crop = RandomSampleCrop(modes=("any",), rng=np.random.RandomState(0))
    ious = [jaccard_numpy(boxes, crop.sample(75, 100, boxes)[0]).max() for _ in range(50)]
    assert min(ious) < 0.3


def test_crop_modes_are_the_papers():
    assert CROP_MODES == (None, 0.1, 0.3, 0.5, 0.7, 0.9, "any")


def test_empty_targets_survive_every_mode():
    img = _image()
    for mode in ("ssd", "flip", "none"):
        for seed in range(40):
            out, b, lab = SSDAugmentation(48, mode=mode, rng=np.random.RandomState(seed))(
                img, np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
            assert out.shape == (48, 48, 3)
            assert b.shape == (0, 4) and lab.shape == (0,)


def test_same_seed_same_output_and_different_seed_differs():
    img = _image()
    boxes, labels = _boxes()
    a = SSDAugmentation(64, rng=np.random.RandomState(7))(img, boxes, labels)
    b = SSDAugmentation(64, rng=np.random.RandomState(7))(img, boxes, labels)
    c = SSDAugmentation(64, rng=np.random.RandomState(8))(img, boxes, labels)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_global_numpy_state_drives_the_default_transform():
    img = _image()
    boxes, labels = _boxes()
    aug = SSDAugmentation(64)
    np.random.seed(3)
    a = aug(img, boxes, labels)
    np.random.seed(3)
    b = aug(img, boxes, labels)
    np.testing.assert_array_equal(a[0], b[0])


def test_fused_chain_equals_the_op_by_op_chain():
    boxes, labels = _boxes()
    for seed in range(60):  # small images upscale, large ones downscale: both fused paths are covered
        img = _image(40, 56, seed=2) if seed % 2 else _image(150, 200, seed=3)
        fused = SSDAugmentation(64, rng=np.random.RandomState(seed))(img, boxes, labels)
        ref = SSDAugmentation(64, rng=np.random.RandomState(seed)).unfused()(img, boxes, labels)
        np.testing.assert_allclose(fused[0], ref[0], atol=0.05)  # warpAffine vs resize: rounding only
        np.testing.assert_allclose(fused[1], ref[1], atol=1e-5)
        np.testing.assert_array_equal(fused[2], ref[2])


def test_expand_fills_the_canvas_with_the_mean_and_shifts_boxes():
    img = np.full((20, 30, 3), 7.0, np.float32)
    boxes = np.array([[1, 2, 10, 12]], np.float32)
    for seed in range(20):
        canvas, b, _ = Expand(MEANS, rng=np.random.RandomState(seed))(img, boxes, np.zeros(1))
        if canvas.shape == img.shape:
            continue
        mask = np.all(canvas == 7.0, axis=2)
        ys, xs = np.nonzero(mask)
        assert mask.sum() == 20 * 30  # the image is pasted once, unscaled
        np.testing.assert_array_equal(canvas[~mask], np.broadcast_to(np.float32(MEANS), canvas[~mask].shape))
        np.testing.assert_allclose(b[0], boxes[0] + [xs.min(), ys.min(), xs.min(), ys.min()])
        return
    pytest.fail("Expand never expanded in 20 seeds")


def test_mirror_flips_image_and_boxes_together():
    img = np.zeros((10, 20, 3), np.float32)
    img[:, :5] = 255.0
    boxes = np.array([[0, 0, 5, 10]], np.float32)
    for seed in range(10):
        out, b, _ = RandomMirror(np.random.RandomState(seed))(img, boxes, np.zeros(1))
        if out[0, 0, 0] == 0:  # flipped
            assert out[0, -1, 0] == 255.0
            np.testing.assert_allclose(b, [[15, 0, 20, 10]])
            return
    pytest.fail("RandomMirror never flipped in 10 seeds")


def test_flip_and_none_modes_give_the_inference_preprocessing_up_to_a_mirror():
    img = _image()
    boxes, labels = _boxes()
    expected = preprocess(img, 32)
    flipped = 0
    for seed in range(10):
        out, b, _ = SSDAugmentation(32, mode="flip", rng=np.random.RandomState(seed))(img, boxes, labels)
        if np.array_equal(out, expected):
            np.testing.assert_allclose(b, boxes, atol=1e-6)
        else:
            np.testing.assert_array_equal(out, expected[:, ::-1])
            np.testing.assert_allclose(b[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [1, 0, 1, 0], boxes, atol=1e-6)
            flipped += 1
    assert 0 < flipped < 10
    out, b, _ = SSDAugmentation(32, mode="none")(img, boxes, labels)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(b, boxes, atol=1e-6)


def test_preprocess_is_resize_uint8_then_float_minus_rgb_mean():
    img = _image(37, 53)
    x = preprocess(img, 30)
    ref = cv2.resize(img, (30, 30), interpolation=cv2.INTER_LINEAR).astype(np.float32) - np.float32([123, 117, 104])
    np.testing.assert_array_equal(x, ref)
    np.testing.assert_array_equal(BaseTransform(30, MEANS)(img)[0], ref)
    # RGB order: a pure-red image becomes (255 - 123, -117, -104)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_array_equal(preprocess(red, 4)[0, 0], [132, -117, -104])


def test_preprocess_batch_equals_stacked_preprocess():
    frames = [_image(37, 53, 1), _image(30, 30, 2), _image(64, 20, 3)]
    batch = preprocess_batch(frames, 30)
    assert batch.shape == (3, 3, 30, 30) and batch.dtype == torch.float32 and batch.is_contiguous()
    ref = torch.stack([torch.from_numpy(preprocess(f, 30)).permute(2, 0, 1) for f in frames])
    torch.testing.assert_close(batch, ref, rtol=0, atol=0)
    u8 = resize_batch_uint8(frames, 30)
    assert u8.dtype == np.uint8 and u8.shape == (3, 30, 30, 3)
    torch.testing.assert_close(normalize_uint8_batch(torch.from_numpy(u8)), ref, rtol=0, atol=0)
    assert preprocess_batch([], 30).shape == (0, 3, 30, 30)


def test_preprocess_rejects_non_rgb_input():
    with pytest.raises(ValueError):
        preprocess(np.zeros((10, 10), np.uint8), 8)
    with pytest.raises(ValueError):
        resize_batch_uint8([np.zeros((10, 10, 3), np.float32)], 8)
