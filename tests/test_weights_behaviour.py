"""weights.behaviour: the publishers' post-processing conventions, as ModelConfig fields that every built model
honours (missing in a file = ssd.pytorch's)."""
import torch

from utils.loading.config import ModelConfig
from weights import hub, registry
from weights.behaviour import SSD_PYTORCH, TORCHVISION


def test_files_that_record_nothing_keep_ssd_pytorch_conventions():
    state = ModelConfig(300, 3, 0.125).build("train").state_dict()
    config = ModelConfig.from_state(state, {})
    assert {k: getattr(config, k) for k in SSD_PYTORCH} == SSD_PYTORCH
    assert {k: getattr(ModelConfig.from_state(state, TORCHVISION), k) for k in TORCHVISION} == TORCHVISION


def test_a_model_built_with_torchvision_conventions_has_its_priors_and_detect_settings():
    legacy = ModelConfig(300, 81, 0.125, prior_config="COCO").build("test")
    model = ModelConfig(300, 81, 0.125, prior_config="COCO", **TORCHVISION).build("test")
    assert model.detect.nms_top_k == 400 and model.detect.keep_top_k == 200 and model.detect.clip is True
    changed = (model.priors != legacy.priors).any(dim=1)
    assert int(changed.sum()) == 114 and torch.equal(model.priors[:, 2:], legacy.priors[:, 2:])  # centres only
    assert "priors" not in model.state_dict()  # a non-persistent buffer: checkpoints keep their keys
    assert ModelConfig.from_model(model) == ModelConfig(300, 81, 0.125, prior_config="COCO", **TORCHVISION)


def test_every_registry_converter_has_an_implementation():
    assert {e.converter for e in registry.REGISTRY} - {None} <= set(hub.CONVERTERS)
