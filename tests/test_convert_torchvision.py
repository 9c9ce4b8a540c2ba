"""weights.convert_torchvision: torchvision's SSD300-VGG16 (random weights, seeded, saved as the download would be)
converted to this project's keys gives torchvision's priors, head outputs and detections."""
import copy

import numpy as np
import pytest
import torch

tv_detection = pytest.importorskip("torchvision.models.detection")

from data.coco import COCO_CATEGORY_IDS, COCO_CLASSES  # noqa: E402
from data.config import MEANS, get_config  # noqa: E402
from layers.prior_box import PriorBox  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.inference import open_predictor  # noqa: E402
from utils.loading.checkpoint import load_model  # noqa: E402
from weights.behaviour import TORCHVISION  # noqa: E402
from weights.convert_torchvision import convert_file, main as convert_main  # noqa: E402

KEEP = [0] + list(COCO_CATEGORY_IDS)  # torchvision class indices of our classes 0..80


@pytest.fixture(scope="module")
def torchvision_ssd():
    torch.manual_seed(0)
    return tv_detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()


@pytest.fixture(scope="module")
def converted(torchvision_ssd, tmp_path_factory):
    """(path of the converted checkpoint, loaded test-phase model, meta) via the command line."""
    folder = tmp_path_factory.mktemp("tv")
    src = folder / "ssd300_vgg16_coco-b556d3b4.pth"
    torch.save(torchvision_ssd.state_dict(), src)
    dst = folder / "ssd300_coco.pth"
    assert convert_main([str(src), "-o", str(dst)]) == 0
    model, meta = load_model(str(dst), "test")
    return str(dst), model.eval(), meta


def _anchors(tv):
    return tv.anchor_generator._grid_default_boxes([[38, 38], [19, 19], [10, 10], [5, 5], [3, 3], [1, 1]],
                                                   [300, 300])


def test_checkpoint_records_coco_classes_priors_and_torchvision_behaviour(converted):
    path, model, meta = converted
    assert meta["class_names"] == list(COCO_CLASSES) and model.num_classes == 81
    assert meta["model_config"].prior_config == "COCO"
    for key, value in TORCHVISION.items():
        assert meta["config"][key] == value


def test_priors_with_wh_clipping_equal_torchvision_default_boxes(converted, torchvision_ssd):
    expected = _anchors(torchvision_ssd)  # [8732, 4] cx, cy, w, h relative
    ours = PriorBox(get_config("COCO", 300), clip=converted[2]["config"]["prior_clip"]).forward()
    assert ours.shape == expected.shape == (8732, 4)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-6)
    # ssd.pytorch's clamp of the centres too: 114 priors differ, by up to 4 px at 300
    legacy = PriorBox(get_config("COCO", 300)).forward()
    differ = (legacy - expected).abs().amax(dim=1) > 1e-6
    assert int(differ.sum()) == 114
    assert 3.9 < float((legacy - expected).abs().max()) * 300 <= 4.0 + 1e-4


def test_loc_and_conf_equal_torchvision_head_outputs_on_the_same_batch(converted, torchvision_ssd):
    torch.manual_seed(1)
    x = torch.randn(1, 3, 300, 300) * 60  # a preprocessed batch (mean-subtracted 0-255 scale)
    with torch.no_grad():
        head = torchvision_ssd.head(list(torchvision_ssd.backbone(x).values()))
        loc, conf = converted[1].forward_raw(x)
    expected_conf = head["cls_logits"][..., KEEP]
    assert loc.shape == head["bbox_regression"].shape == (1, 8732, 4) and conf.shape == (1, 8732, 81)
    assert float((loc - head["bbox_regression"]).abs().max()) <= 1e-5 * float(head["bbox_regression"].abs().max())
    assert float((conf - expected_conf).abs().max()) <= 1e-5 * float(expected_conf.abs().max())


def test_torchvision_input_scaling_is_x_times_255_minus_our_means(torchvision_ssd):
    img = torch.randint(0, 256, (3, 300, 300)).float()
    with torch.no_grad():
        seen = torchvision_ssd.transform([img / 255])[0].tensors[0]
    tv_mean = torch.tensor(torchvision_ssd.transform.image_mean) * 255
    assert torch.allclose(seen, img - tv_mean.view(3, 1, 1), atol=1e-3)
    assert float((tv_mean - torch.tensor(MEANS, dtype=torch.float32)).abs().max()) < 1e-3  # 122.9993 vs 123, ...


def test_class_rows_are_the_coco_category_ids_per_anchor(converted, torchvision_ssd):
    state = converted[1].state_dict()
    tv_w = torchvision_ssd.head.classification_head.module_list[1].weight.detach()  # 6 anchors x 91
    ours = state["conf.1.weight"].view(6, 81, *tv_w.shape[1:])
    theirs = tv_w.view(6, 91, *tv_w.shape[1:])
    for j, name in [(0, "__background__"), (1, "person"), (12, "stop sign"), (80, "toothbrush")]:
        assert torch.equal(ours[:, j], theirs[:, KEEP[j]]), name
    assert COCO_CLASSES[11] == "stop sign" and KEEP[12] == 13


def test_predictor_matches_torchvision_detections_on_a_300x300_frame(converted, torchvision_ssd, tmp_path):
    """The converted file opened the plain way (``open_predictor``) runs with the post-processing it records
    (torchvision's: wh-clipped priors, clip before NMS, 400 candidates, 200 per image), so its boxes, scores and
    labels equal torchvision's ``model(images)``. Random weights, adjusted so both
    sides see the same problem: the 10 unused COCO ids get a -1e4 bias (softmax over 91 = softmax over the kept
    81), the box regression is scaled down (torchvision clamps log-size offsets above log(1000/16), our decode
    does not), and torchvision's mean is set to exactly (123, 117, 104)/255."""
    tv = copy.deepcopy(torchvision_ssd)
    unused = [i for i in range(1, 91) if i not in COCO_CATEGORY_IDS]
    with torch.no_grad():
        for conv in tv.head.classification_head.module_list:
            conv.weight.view(-1, 91, *conv.weight.shape[1:])[:, unused] = 0
            conv.bias.view(-1, 91)[:, unused] = -1e4
        for conv in tv.head.regression_head.module_list:
            conv.weight.mul_(0.2)
            conv.bias.mul_(0.2)
    tv.transform.image_mean = [m / 255 for m in MEANS]
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    convert_file(str(path), str(tmp_path / "ours.pth"))
    frame = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    ours = open_predictor(str(tmp_path / "ours.pth")).predict([frame])[0]
    with torch.no_grad():
        theirs = tv([torch.from_numpy(frame).permute(2, 0, 1).float() / 255])[0]
    labels = torch.tensor(KEEP)[torch.from_numpy(ours.labels)]
    assert len(ours) == len(theirs["scores"]) == 200
    assert sorted(labels.tolist()) == sorted(theirs["labels"].tolist())
    # near-equal scores of one class may be listed in another order: match each box to its nearest twin
    for box, score, label in zip(torch.from_numpy(ours.boxes), torch.from_numpy(ours.scores), labels):
        same = (theirs["labels"] == label).nonzero().squeeze(1)
        dist = (theirs["boxes"][same] - box).abs().amax(dim=1)
        j = same[dist.argmin()]
        assert float(dist.min()) < 1e-2 and abs(float(theirs["scores"][j] - score)) < 1e-5


def test_converter_refuses_a_file_that_is_not_torchvision_ssd(make_checkpoint, tmp_path):
    with pytest.raises(UserError, match="already has this project's keys"):
        convert_file(make_checkpoint(bare=True), str(tmp_path / "out.pth"))
    torch.save({"backbone.features.0.weight": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="not a torchvision SSD300-VGG16"):
        convert_file(str(tmp_path / "odd.pth"), str(tmp_path / "out.pth"))
    assert not (tmp_path / "out.pth").exists()
