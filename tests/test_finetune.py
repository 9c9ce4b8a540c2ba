"""weights.finetune / weights.convert: a trained SSD moved onto a new class set (shared layers, background and
matching class rows copied, anchor-major head layout, VOC<->COCO synonyms)."""
import pytest
import torch

from data.coco import COCO_CLASSES
from data.voc0712 import VOC_CLASSES
from utils.errors import UserError
from utils.loading.checkpoint import load_model, read_checkpoint, save_checkpoint
from utils.loading.config import ModelConfig
from weights.behaviour import TORCHVISION
from weights.convert import main as convert_main
from weights.finetune import match_classes, transfer_state

SOURCE = ["circle", "square", "triangle", "star", "ring"]


def _state(names, seed, width=0.125, prior="VOC"):
    torch.manual_seed(seed)
    return ModelConfig(300, len(names) + 1, width, prior_config=prior).build("train").state_dict()


def test_transfer_copies_shared_layers_background_and_matching_rows_per_anchor():
    src, fresh = _state(SOURCE, 0), _state(["Square", "hexagon", "circle"], 1)
    out, report = transfer_state(src, SOURCE, fresh, ["Square", "hexagon", "circle"])
    assert report.transferred == [("Square", "square"), ("circle", "circle")] and report.new == ["hexagon"]
    for key, value in out.items():
        if not key.startswith("conf."):
            assert torch.equal(value, src[key]), key
    for k in range(6):
        for param in ("weight", "bias"):
            key = f"conf.{k}.{param}"
            s = src[key].view(-1, 6, *src[key].shape[1:])        # [A, 6 classes, ...]: row a * C + c
            f = fresh[key].view(-1, 4, *fresh[key].shape[1:])
            o = out[key].view(-1, 4, *out[key].shape[1:])
            assert out[key].shape == fresh[key].shape
            assert torch.equal(o[:, 0], s[:, 0]) and torch.equal(o[:, 1], s[:, 2]) and torch.equal(o[:, 3], s[:, 1])
            assert torch.equal(o[:, 2], f[:, 2])                  # the new class keeps its fresh init
    assert not torch.equal(out["conf.0.weight"], fresh["conf.0.weight"])


def test_voc_names_match_coco_names_through_the_synonyms_case_insensitively():
    matches = match_classes(COCO_CLASSES, VOC_CLASSES)
    assert all(m is not None for m in matches)
    pairs = {v: COCO_CLASSES[m] for v, m in zip(VOC_CLASSES, matches)}
    assert pairs["aeroplane"] == "airplane" and pairs["tvmonitor"] == "tv" and pairs["diningtable"] == "dining table"
    assert pairs["pottedplant"] == "potted plant" and pairs["sofa"] == "couch" and pairs["motorbike"] == "motorcycle"
    assert match_classes(VOC_CLASSES, ["Person", "AIRPLANE", "unicorn"]) == [VOC_CLASSES.index("person"),
                                                                          VOC_CLASSES.index("aeroplane"), None]


def test_a_model_of_another_architecture_is_refused():
    with pytest.raises(UserError, match="does not fit the new model"):
        transfer_state(_state(SOURCE, 0, width=0.25), SOURCE, _state(["circle"], 1), ["circle"])


@pytest.fixture(scope="module")
def coco_model(make_checkpoint, tmp_path_factory):
    """A random-weight 80-class COCO model that records torchvision's behaviour, as the converted one does."""
    path = make_checkpoint(class_names=tuple(COCO_CLASSES), prior_config="COCO")
    ckpt = read_checkpoint(path)
    ckpt["config"].update(TORCHVISION)
    out = tmp_path_factory.mktemp("coco") / "coco.pth"
    save_checkpoint(ckpt, str(out))
    return str(out)


def test_convert_coco_to_voc_keeps_the_selected_coco_rows_and_outputs(coco_model, tmp_path, capsys):
    out = tmp_path / "voc.pth"
    assert convert_main([coco_model, "--classes", "voc", "-o", str(out)]) == 0
    assert "20 classes transferred" in capsys.readouterr().out
    src_model, _ = load_model(coco_model, "train")
    voc_model, meta = load_model(str(out), "train")
    assert meta["class_names"] == list(VOC_CLASSES)
    assert meta["model_config"].prior_config == "COCO" and meta["config"]["prior_clip"] == "wh"
    rows = [0] + [COCO_CLASSES.index(c) + 1 for c in
                  [{"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv",
                    "diningtable": "dining table", "pottedplant": "potted plant"}.get(v, v) for v in VOC_CLASSES]]
    for k in range(6):
        w_src = src_model.conf[k].weight.view(-1, 81, *src_model.conf[k].weight.shape[1:])
        w_voc = voc_model.conf[k].weight.view(-1, 21, *voc_model.conf[k].weight.shape[1:])
        assert torch.equal(w_voc, w_src[:, rows])
    x = torch.randn(1, 3, 300, 300) * 50
    with torch.no_grad():
        loc_c, conf_c = src_model.eval().forward_raw(x)
        loc_v, conf_v = voc_model.eval().forward_raw(x)
    assert torch.equal(loc_v, loc_c) and torch.allclose(conf_v, conf_c[..., rows], atol=1e-5)


def test_convert_to_a_class_file_without_any_match_is_refused(coco_model, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("unicorn\ndragon\n")
    with pytest.raises(UserError, match="no class") as exc:
        convert_main([coco_model, "--classes", str(labels), "-o", str(tmp_path / "x.pth")])
    assert exc.value.code == 2 and not (tmp_path / "x.pth").exists()


def test_load_pretrained_into_a_fresh_model_reports_and_loads(coco_model):
    from weights.finetune import load_pretrained_into

    torch.manual_seed(3)
    model = ModelConfig(300, 4, 0.125, prior_config="COCO").build("train")
    fresh_new_row = model.conf[0].weight.view(4, 4, *model.conf[0].weight.shape[1:])[:, 2].clone()
    report = load_pretrained_into(model, ["Dog", "unicorn", "tvmonitor"], coco_model)
    assert report.transferred == [("Dog", "dog"), ("tvmonitor", "tv")] and report.new == ["unicorn"]
    src, _ = load_model(coco_model, "train")
    assert torch.equal(model.vgg[0].weight, src.vgg[0].weight)
    w = model.conf[0].weight.view(4, 4, *model.conf[0].weight.shape[1:])
    w_src = src.conf[0].weight.view(4, 81, *src.conf[0].weight.shape[1:])
    assert torch.equal(w[:, 1], w_src[:, COCO_CLASSES.index("dog") + 1]) and torch.equal(w[:, 2], fresh_new_row)
    assert "2 classes transferred: Dog (from dog), tvmonitor (from tv); 1 new: unicorn" == report.summary()
