"""weights.behaviour: the post-processing/input fields a checkpoint records (missing = ssd.pytorch's)."""
import numpy as np
import pytest
import torch

from data.transforms import preprocess_batch
from utils.loading.config import ModelConfig
from weights import hub, registry
from weights.behaviour import SSD_PYTORCH, TORCHVISION, apply_behaviour, behaviour_of, to_input_order


def test_files_that_record_nothing_keep_ssd_pytorch_behaviour():
    assert behaviour_of({}) == SSD_PYTORCH
    assert behaviour_of({"num_classes": 81, **TORCHVISION}) == TORCHVISION
    with pytest.raises(ValueError, match="input_order"):
        behaviour_of({"input_order": "GBR"})


def test_apply_behaviour_sets_priors_and_detect_of_a_built_model():
    model = ModelConfig(300, 81, 0.125, prior_config="COCO").build("test")
    legacy = model.priors.clone()
    apply_behaviour(model, TORCHVISION)
    assert model.detect.nms_top_k == 400 and model.detect.keep_top_k == 200 and model.detect.clip is True
    changed = (model.priors != legacy).any(dim=1)
    assert int(changed.sum()) == 114 and torch.equal(model.priors[:, 2:], legacy[:, 2:])  # only centres differ
    assert "priors" not in model.state_dict()  # still a non-persistent buffer: checkpoints keep their keys


def test_bgr_input_equals_caffe_preprocessing_of_the_bgr_image():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    ours = to_input_order(preprocess_batch([rgb], 300), "BGR")
    caffe = preprocess_batch([np.ascontiguousarray(rgb[..., ::-1])], 300, mean=(104, 117, 123))
    assert torch.equal(ours, caffe)
    assert torch.equal(to_input_order(ours, "RGB"), ours)


def test_every_registry_converter_has_an_implementation():
    assert {e.converter for e in registry.REGISTRY} - {None} <= set(hub.CONVERTERS)
