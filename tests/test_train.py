"""train.py and utils/training/: tiny model (width 0.125), tiny generated dataset, a few iterations on CPU."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import socket
import time

import numpy as np
import pytest
import torch
from torch import nn

import eval as eval_cli
import train
from ssd import build_ssd
from train_helpers import (TINY, make_tiny_dataset, read_log, run_train, share_in_two_processes, start_train, tiny,
                           train_then_resume)
from utils import cli
from utils.errors import UserError
from utils.loading.checkpoint import CHECKPOINT_FORMAT, load_model, read_checkpoint
from utils.loading.config import ModelConfig
from utils.training.checkpoints import latest_checkpoint, write_checkpoint
from utils.training.guards import NonFiniteGuard, NonFiniteLossError
from utils.training.hooks import TestHooks, parse_iterations
from utils.training.optim import build_optimizer, freeze_vgg
from utils.training.resume import check_resume_architecture
from utils.training.rng import capture_rng_state, restore_rng_state
from utils.training.sampler import EndlessBatchSampler, SeededDataset
from utils.training import trainer
from utils.training.budget import Throughput, ThroughputMeter, fit_max_iter, scale_steps
from utils.training.schedule import LRSchedule, build_scheduler, set_schedule_length, set_scheduler_iteration
from utils.training.settings import prior_config_name, resolve_settings, validate

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")), num=8)




def weights(path):
    return read_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------------------
# library pieces
# ---------------------------------------------------------------------------------------------------------

def test_sampler_is_endless_reshuffled_and_covers_each_epoch():
    s = EndlessBatchSampler(5, 2, seed=1)
    it = iter(s)
    stream = [i for _ in range(10) for i, _ in next(it)]  # 20 samples = 4 epochs, never StopIteration
    epochs = [stream[k:k + 5] for k in range(0, 20, 5)]
    assert all(sorted(e) == list(range(5)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled per epoch


def test_sampler_shards_global_batches_and_resumes_by_position():
    one = iter(EndlessBatchSampler(7, 4, seed=3))
    ranks = [iter(EndlessBatchSampler(7, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(5):
        assert next(one) == next(ranks[0]) + next(ranks[1])  # 2 ranks x batch 2 == 1 x batch 4, same seeds
    straight = iter(EndlessBatchSampler(7, 3, seed=0))
    batches = [next(straight) for _ in range(6)]
    resumed = iter(EndlessBatchSampler(7, 3, seed=0, start_batch=4))
    assert [next(resumed), next(resumed)] == batches[4:]


def test_seeded_dataset_makes_augmentation_a_function_of_the_seed():
    class Noisy:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return i, float(np.random.rand())

    ds = SeededDataset(Noisy())
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    assert ds[(1, 42)] == ds[(1, 42)]
    assert ds[(1, 42)] != ds[(1, 43)]
    assert np.array_equal(np.random.get_state()[1], before)  # global state untouched


def test_step_schedule_with_warmup_and_jump_past_a_step():
    f = LRSchedule("step", warmup=4, warmup_factor=0.25, steps=[10, 20], gamma=0.1)
    assert f(0) == pytest.approx(0.25) and f(2) == pytest.approx(0.625) and f(4) == 1.0
    assert f(9) == 1.0 and f(10) == pytest.approx(0.1) and f(25) == pytest.approx(0.01)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, "sgd", 1e-3)
    sched = build_scheduler(opt, f)
    set_scheduler_iteration(sched, 15)  # --start_iter past a step: the decay is applied (ssd.pytorch missed it)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    opt.step()
    sched.step()
    assert sched.last_epoch == 16 and opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_cosine_schedule_decays_to_zero_after_warmup():
    f = LRSchedule("cosine", warmup=10, warmup_factor=0.0, max_iter=110)
    assert f(0) == 0.0 and f(10) == 1.0 and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)


def test_scheduler_state_survives_a_weights_only_round_trip(tmp_path):
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, "adamw", 1e-3)
    sched = build_scheduler(opt, LRSchedule("step", 0, 1.0, [3], 0.1, 10))
    for _ in range(5):
        opt.step()
        sched.step()
    path = str(tmp_path / "s.pth")
    torch.save({"scheduler": sched.state_dict(), "rng": capture_rng_state()}, path)
    state = torch.load(path, weights_only=True)
    opt2 = build_optimizer(nn.Linear(2, 2), "adamw", 1e-3)
    sched2 = build_scheduler(opt2, LRSchedule())
    sched2.load_state_dict(state["scheduler"])
    assert sched2.last_epoch == 5 and sched2.lr_lambdas[0].steps == [3]
    sched2.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in the legacy state
    path = str(tmp_path / "rng.pth")
    torch.save(capture_rng_state(), path)
    expect = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    restore_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1])
    assert expect[2] == got[2] and expect[3] == got[3]


def test_adamw_has_no_weight_decay_on_batchnorm_and_bias_sgd_decays_all():
    model = build_ssd("train", 300, 3, width=0.125, batch_norm=True)
    opt = build_optimizer(model, "adamw", 1e-3, weight_decay=5e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    bn_and_bias = {id(p) for n, p in model.named_parameters() if p.ndim == 1}
    assert {id(p) for p in no_decay["params"]} == bn_and_bias
    assert id(model.L2Norm.weight) in bn_and_bias and id(model.vgg[1].weight) in bn_and_bias  # L2Norm, BN
    sgd = build_optimizer(model, "sgd", 1e-3)
    assert len(sgd.param_groups) == 1 and sgd.param_groups[0]["weight_decay"] == 5e-4


def test_freeze_vgg_fixes_the_first_blocks_only():
    model = build_ssd("train", 300, 3, width=0.125)
    freeze_vgg(model, "conv2")
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == sorted(f"vgg.{i}.{k}" for i in (0, 2, 5, 7) for k in ("weight", "bias"))  # conv1_1..conv2_2
    opt = build_optimizer(model, "sgd", 1e-3)
    assert not any(p is model.vgg[0].weight for p in opt.param_groups[0]["params"])
    bn = build_ssd("train", 300, 3, width=0.125, batch_norm=True)
    freeze_vgg(bn, "conv1")
    assert not bn.vgg[4].weight.requires_grad and bn.vgg[7].weight.requires_grad  # BN of conv1_2; conv2_1


def test_nonfinite_guard_stops_after_patience_in_a_row():
    g = NonFiniteGuard(3)
    for it, ok in enumerate([False, False, True, False, False], 1):
        g.update(ok, it)
    assert g.total == 4 and g.in_a_row == 2
    with pytest.raises(NonFiniteLossError, match="3 iterations in a row"):
        g.update(False, 6)


def test_latest_checkpoint_prefers_pointer_then_highest_iteration(tmp_path):
    folder = str(tmp_path)
    for it in (5, 40, 300):
        open(os.path.join(folder, f"ssd300_VOC_{it}.pth"), "w").close()
    open(os.path.join(folder, ".ssd300_VOC_400.pth.abc.tmp"), "w").close()  # a killed write: ignored
    assert latest_checkpoint(folder, 300, "VOC").endswith("ssd300_VOC_300.pth")
    write_checkpoint({"x": torch.zeros(1)}, os.path.join(folder, "ssd300_VOC_final.pth"),
                     os.path.join(folder, "ssd300_VOC_latest.txt"))
    assert latest_checkpoint(folder, 300, "VOC").endswith("ssd300_VOC_final.pth")
    assert latest_checkpoint(folder, 512, "VOC") is None


# ---------------------------------------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------------------------------------

def test_ssd_pytorch_flags_parse_with_their_meaning():
    argv = ["--dataset", "VOC", "--dataset_root", "/data/VOCdevkit", "--basenet", "vgg16_reducedfc.pth",
            "--batch_size", "32", "--start_iter", "0", "--num_workers", "4", "--cuda", "True",
            "--learning-rate", "1e-3", "--momentum", "0.9", "--weight_decay", "5e-4", "--gamma", "0.1",
            "--visdom", "False", "--save_folder", "weights/"]
    ns, explicit = train.parse_args(argv)
    s = resolve_settings(ns, explicit, None, False)
    assert (s.dataset, s.dataset_root, s.basenet, s.batch_size, s.num_workers) == \
        ("VOC", "/data/VOCdevkit", "vgg16_reducedfc.pth", 32, 4)
    assert s.cuda is True and s.visdom is False and s.lr == 1e-3 and s.gamma == 0.1
    assert s.max_iter == 120000 and s.lr_steps == [80000, 100000, 120000]  # the paper's schedule from the config
    assert (s.size, s.width, s.batch_norm, s.optimizer, s.lr_schedule) == (300, 1.0, False, "sgd", "step")
    assert s.channels_last is True and s.amp is False  # NHWC on CPUs (faster, same numbers); fp32
    assert resolve_settings(ns, explicit, None, True, "cuda").channels_last is False
    ns, explicit = train.parse_args(["--lr", "0.002", "--cuda", "no", "--resume", "ssd300_mAP_77.43_v2.pth"])
    assert ns.lr == 0.002 and ns.cuda is False and ns.resume == "ssd300_mAP_77.43_v2.pth"


def test_preset_sets_the_cpu_configuration_and_explicit_flags_override():
    ns, explicit = train.parse_args(["--dataset", "custom", "--dataset_root", "x", "--preset", "cpu-demo",
                                     "--lr", "1e-3", "--no-amp", "--lr_steps", "10,20"])
    s = resolve_settings(ns, explicit, None, True)
    assert (s.width, s.batch_norm, s.optimizer, s.lr_schedule, s.warmup, s.grad_clip, s.augment) == \
        (0.25, True, "adamw", "cosine", 50, 10.0, "flip")
    assert s.channels_last and s.batch_size == 16 and s.basenet == "none" and s.background_prior == 0.99
    assert s.stem == "s2"
    # a checkpoint from before --stem (no "stem" in its config) resumes with the VGG stem it has
    old = resolve_settings(ns, explicit, {"preset": "cpu-demo", "width": 0.25}, True)
    assert old.stem == "vgg" and old.width == 0.25
    assert s.lr == 1e-3 and s.amp is False and s.lr_steps == [10, 20]  # explicit wins
    ns, explicit = train.parse_args(["--dataset", "custom", "--dataset_root", "x", "--preset", "cpu-demo"])
    assert resolve_settings(ns, explicit, None, True).amp is True
    assert resolve_settings(ns, explicit, None, False).amp is False  # no native bf16: fp32


@pytest.mark.parametrize("argv, code, pattern", [
    (["--batch_size", "0"], 2, "--batch_size must be at least 1"),
    (["--size", "400"], 2, "invalid choice: 400"),
    (["--max_iter", "0"], 2, "--max_iter must be at least 1"),
    (["--optimizer", "adam"], 2, "invalid choice"),
    (["--no_such_flag"], 2, "unrecognized arguments"),
    (["--background_prior", "1"], 2, "--background_prior must be in"),
])
def test_usage_errors_are_one_line_with_status_2(data_root, tmp_path, argv, code, pattern):
    with pytest.raises(UserError, match=pattern) as exc:
        train.main(tiny(data_root, tmp_path) + argv)
    assert exc.value.code == code and "\n" not in exc.value.message


def test_range_flags_use_the_shared_validators_and_resolved_values_meet_the_same_rule():
    assert train.RANGES["batch_size"] is cli.batch_size and train.RANGES["num_workers"] is cli.non_negative_int
    # a bad flag fails while parsing, in the shared wording
    for argv, message in ((["--num_workers", "-1"], "--num_workers must be 0 or more, got -1"),
                          (["--width", "4.5"], "--width must be in (0, 4], got 4.5"),
                          (["--eval_batch_size", "0"], "--eval_batch_size must be at least 1, got 0")):
        with pytest.raises(UserError) as exc:
            train.parse_args(argv)
        assert exc.value.message == f"{message} (see python train.py --help)" and exc.value.code == 2
    # a value no flag parsed (a resumed checkpoint's config) is checked by the same function after resolving
    ns, explicit = train.parse_args(["--dataset", "custom", "--dataset_root", "x"])
    s = resolve_settings(ns, explicit, {"batch_size": 0, "width": 0.25}, False)
    with pytest.raises(UserError) as exc:
        validate(s, train.RANGES)
    assert exc.value.message == "--batch_size must be at least 1, got 0" and exc.value.code == 2
    s.batch_size = 2
    validate(s, train.RANGES)
    s.lr = -1.0  # --lr/--learning-rate: checked here only, so the message names --lr
    with pytest.raises(UserError, match=r"^--lr must be positive, got -1.0$"):
        validate(s, train.RANGES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_device_cuda_without_cuda_is_a_usage_error(data_root, tmp_path):
    with pytest.raises(UserError, match="CUDA is not available") as exc:
        train.main(tiny(data_root, tmp_path) + ["--device", "cuda"])
    assert exc.value.code == 2


def test_missing_inputs_name_the_file_and_what_to_do(data_root, tmp_path):
    with pytest.raises(UserError, match="needs --dataset_root") as exc:
        train.main(["--dataset", "custom"])
    assert exc.value.code == 2
    with pytest.raises(UserError, match="dataset root not found: .*nowhere"):
        train.main(tiny(str(tmp_path / "nowhere"), tmp_path))
    with pytest.raises(UserError, match="model file not found: .*missing.pth"):
        train.main(tiny(data_root, tmp_path) + ["--resume", str(tmp_path / "missing.pth")])
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(UserError, match="corrupt.pth"):
        train.main(tiny(data_root, tmp_path) + ["--resume", str(bad)])
    with pytest.raises(UserError, match="(?s)base network not found.*weights.convert_vgg.*--basenet none"):
        train.main(tiny(data_root, tmp_path) + ["--width", "1", "--basenet", "vgg16_reducedfc.pth"])
    with pytest.raises(UserError, match="--resume latest: no ssd300_custom"):
        train.main(tiny(data_root, tmp_path) + ["--resume", "latest"])


class _Payload:
    """Unpickling this would create a file: a stand-in for a checkpoint that runs code when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_code_in_a_checkpoint_and_nan_weights(data_root, tmp_path, make_checkpoint):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Payload(str(marker))}, str(evil))
    with pytest.raises(UserError, match="refusing to load .*evil.pth"):
        train.main(tiny(data_root, tmp_path) + ["--resume", str(evil)])
    assert not marker.exists()
    state = torch.load(make_checkpoint(bare=True), weights_only=True)
    state["conf.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, str(tmp_path / "nan.pth"))
    with pytest.raises(UserError, match="NaN/inf values in conf.0.weight"):
        train.main(tiny(data_root, tmp_path) + ["--resume", str(tmp_path / "nan.pth")])


def test_cli_error_is_one_line_on_stderr_without_traceback(data_root, tmp_path):
    run = run_train(tiny(data_root, tmp_path, "--batch_size", "0"), str(tmp_path / "logs"))
    assert run.process.exitcode == 2
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --batch_size") and "Traceback" not in run.stderr
    run = run_train(tiny(data_root, tmp_path, "--basenet", "nothere.pth", "--width", "1"), str(tmp_path / "logs"))
    assert run.process.exitcode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: base network not found")


# ---------------------------------------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------------------------------------

def test_loss_falls_when_overfitting_a_few_images(tmp_path):
    root = make_tiny_dataset(str(tmp_path / "two_images"), num=2, seed=1)
    run = run_train(tiny(root, tmp_path / "w", "--max_iter", 16, "--save_every", 1000, "--optimizer", "adamw",
                         "--lr", "2e-3", "--batch_norm", "--augment", "none", "--eval_every", 8,
                         "--eval_split", "val"), str(tmp_path / "logs"))
    assert run.process.exitcode == 0, run.stderr
    losses = [r["loss"] for r in read_log(str(tmp_path / "w" / "ssd300_custom_log.csv"))]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.2 * np.mean(losses[:2]), losses
    assert np.mean(losses[-4:]) < np.mean(losses[-8:-4]), losses  # still falling at the end
    final = str(tmp_path / "w" / "ssd300_custom_final.pth")
    assert read_checkpoint(final)["iteration"] == 16
    # --eval_every: mAP on the held-out split through eval's code, logged
    evals = read_log(str(tmp_path / "w" / "ssd300_custom_eval.csv"))
    assert [r["iteration"] for r in evals] == [8, 16] and list(evals[0]) == ["iteration", "mAP", "AP_box", "AP_disc"]
    assert "eval at iteration 16: voc07 mAP" in run.stdout
    # the mAP logged at the last iteration is eval.py's on the final checkpoint (same weights, same split)
    report = tmp_path / "eval.json"
    assert eval_cli.main(["--dataset", "custom", "--dataset_root", root, "--set", "val", "--trained_model",
                          str(tmp_path / "w" / "ssd300_custom_final.pth"), "--batch_size", "16", "--num_workers",
                          "0", "--save_folder", str(tmp_path / "eval"), "--json", str(report), "--no-progress"]) == 0
    expected = json.loads(report.read_text())
    assert evals[-1]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert evals[-1]["AP_disc"] == pytest.approx(expected["ap"]["disc"], abs=1e-6) and expected["mAP"] > 0
    assert math.isnan(evals[-1]["AP_box"]) and expected["ap"]["box"] is None  # no box in the 2 images: n/a
    # the final checkpoint is a complete training checkpoint that the inference code loads
    ckpt = read_checkpoint(final)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    assert ckpt["class_names"] == ["box", "disc"] and ckpt["config"]["num_classes"] == 3
    assert {"optimizer", "scheduler", "scaler", "rng"} <= ckpt.keys()
    assert not any(k.startswith("module.") for k in ckpt["model"])
    model, meta = load_model(final, "test")
    assert meta["class_names"] == ["box", "disc"] and model.width == 0.125 and model.batch_norm


def test_resume_continues_exactly(data_root, tmp_path):
    # SGD momentum, warm-up, a step decay crossed after the resume point, BN statistics, flip augmentation
    args = ["--max_iter", 6, "--save_every", 3, "--batch_norm", "--augment", "flip", "--warmup", 2,
            "--lr_steps", "5", "--grad_clip", 5, "--seed", 7]
    _, resumed, a, b = train_then_resume(data_root, tmp_path, args, str(tmp_path / "logs"))
    assert "resumed from" in resumed.stdout and "at iteration 3" in resumed.stdout
    assert [r["iteration"] for r in b] == [4, 5, 6]
    assert [(r["loss"], r["lr"]) for r in a[3:]] == [(r["loss"], r["lr"]) for r in b]
    assert b[1]["lr"] == pytest.approx(1e-3) and b[2]["lr"] == pytest.approx(1e-4)  # decayed after resuming
    assert_same_weights(weights(str(tmp_path / "a" / "ssd300_custom_final.pth")),
                        weights(str(tmp_path / "b" / "ssd300_custom_final.pth")))


def test_resume_from_bare_state_dict_starts_at_start_iter(data_root, tmp_path):
    src = run_train(tiny(data_root, tmp_path / "a", "--max_iter", 1), str(tmp_path / "logs"))
    assert src.process.exitcode == 0, src.stderr
    bare = str(tmp_path / "bare.pth")
    torch.save({f"module.{k}": v for k, v in weights(str(tmp_path / "a" / "ssd300_custom_final.pth")).items()},
               bare)  # an ssd.pytorch-style (DataParallel) state_dict
    run = run_train(tiny(data_root, tmp_path / "b", "--resume", bare, "--start_iter", 4, "--max_iter", 5,
                         "--lr_steps", 3), str(tmp_path / "logs"))
    assert run.process.exitcode == 0, run.stderr
    assert "weights only" in run.stdout
    rows = read_log(str(tmp_path / "b" / "ssd300_custom_log.csv"))
    assert [r["iteration"] for r in rows] == [5] and rows[0]["lr"] == pytest.approx(1e-4)
    # pre-trained weights: --freeze auto keeps conv1_1..conv2_2 fixed, as the original Caffe SSD
    assert "frozen: VGG up to conv2_2" in run.stdout
    before, after = torch.load(bare, weights_only=True), weights(str(tmp_path / "b" / "ssd300_custom_final.pth"))
    assert torch.equal(before["module.vgg.7.weight"], after["vgg.7.weight"])  # conv2_2: frozen
    assert not torch.equal(before["module.vgg.10.weight"], after["vgg.10.weight"])  # conv3_1: trained


def test_injected_nonfinite_loss_is_skipped_and_checkpoint_stays_clean(data_root, tmp_path):
    folder = tmp_path / "w"
    run = run_train(tiny(data_root, folder, "--max_iter", 4, "--save_every", 1, "--batch_norm"),
                    str(tmp_path / "logs"), env={"SSD_TEST_INJECT_NAN_AT": "2"})
    assert run.process.exitcode == 0, run.stderr
    rows = read_log(str(folder / "ssd300_custom_log.csv"))
    assert [r["skipped"] for r in rows] == [0, 1, 1, 1] and math.isnan(rows[1]["loss"])
    assert "1 non-finite steps were skipped" in run.stdout
    # the skipped step changed nothing: weights and BatchNorm statistics of iteration 2 == iteration 1
    assert_same_weights(weights(str(folder / "ssd300_custom_1.pth")), weights(str(folder / "ssd300_custom_2.pth")))
    for path in (folder / "ssd300_custom_3.pth", folder / "ssd300_custom_final.pth"):
        assert all(torch.isfinite(v).all() for v in weights(str(path)).values() if v.is_floating_point())


def test_repeated_nonfinite_loss_stops_with_last_good_checkpoint(data_root, tmp_path):
    folder = tmp_path / "w"
    run = run_train(tiny(data_root, folder, "--max_iter", 20, "--save_every", 2, "--max_nonfinite", 3),
                    str(tmp_path / "logs"), env={"SSD_TEST_INJECT_NAN_AT": "4-30"})
    assert run.process.exitcode == 1
    err = run.stderr.strip().splitlines()[-1]
    assert "NaN/inf for 3 iterations in a row (4..6" in err and "ssd300_custom_4.pth" in err
    assert "Traceback" not in run.stderr
    assert not (folder / "ssd300_custom_final.pth").exists() and not (folder / "ssd300_custom_6.pth").exists()
    good = weights(str(folder / "ssd300_custom_4.pth"))
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_loadable_checkpoint_and_exits_cleanly(data_root, tmp_path, sig):
    folder = tmp_path / "w"
    run = start_train(tiny(data_root, folder, "--max_iter", 10000, "--save_every", 10000), str(tmp_path / "logs"))
    log = folder / "ssd300_custom_log.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.kill(run.process.pid, sig)
    assert run.wait(60) == 0, run.stderr
    path = latest_checkpoint(str(folder), 300, "custom")
    assert path is not None and f"saved {path}" in run.stdout and sig.name in run.stdout
    ckpt = read_checkpoint(path)
    assert ckpt["iteration"] >= 2 and path.endswith(f"_{ckpt['iteration']}.pth")
    load_model(path, "test")


def test_cpu_demo_preset_runs_with_amp_and_channels_last(data_root, tmp_path):
    run = run_train(tiny(data_root, tmp_path / "w", "--preset", "cpu-demo", "--width", "0.125",
                         "--batch_size", 2, "--max_iter", 2, "--amp", "--warmup", 1), str(tmp_path / "logs"))
    assert run.process.exitcode == 0, run.stderr
    assert "amp on (bfloat16)" in run.stdout and "channels_last on" in run.stdout
    ckpt = read_checkpoint(str(tmp_path / "w" / "ssd300_custom_final.pth"))
    cfg = ckpt["config"]
    assert cfg["optimizer"] == "adamw" and cfg["lr_schedule"] == "cosine" and cfg["batch_norm"] and cfg["amp"]
    assert all(v.is_contiguous() for v in ckpt["model"].values())  # channels_last does not leak into the file


def test_prior_scales_choose_the_prior_config_and_auto_follows_the_dataset():
    for argv, expected in ((["--dataset", "custom"], "VOC"), (["--dataset", "COCO"], "COCO"),
                           (["--dataset", "custom", "--prior_scales", "coco"], "COCO"),
                           (["--dataset", "COCO", "--prior_scales", "voc"], "VOC")):
        ns, explicit = train.parse_args(argv + ["--dataset_root", "x"])
        assert prior_config_name(resolve_settings(ns, explicit, None, True)) == expected


def test_background_prior_sets_the_fresh_heads_and_a_resume_keeps_the_trained_ones(data_root, tmp_path):
    ns, explicit = train.parse_args(["--dataset", "custom", "--dataset_root", "x"])
    assert resolve_settings(ns, explicit, None, True).background_prior == 0.0  # ssd.pytorch's zero bias
    run = run_train(tiny(data_root, tmp_path / "w", "--background_prior", "0.99", "--max_iter", 1, "--lr", "1e-12"),
                    str(tmp_path / "logs"))
    assert run.process.exitcode == 0, run.stderr
    state = read_checkpoint(str(tmp_path / "w" / "ssd300_custom_final.pth"))["model"]
    bias = state["conf.0.bias"].view(-1, 3)                      # 2 classes + background, lr ~0: still the init
    assert torch.allclose(torch.softmax(bias, 1)[:, 0], torch.full((bias.shape[0],), 0.99), atol=1e-4)


def test_two_process_gloo_matches_one_process_with_the_global_batch(data_root, tmp_path):
    # no BatchNorm: per-process batch statistics would differ; flip augmentation is seeded per sample. SGD:
    # Adam would turn float-rounding noise in near-zero gradients into full-size steps.
    common = ["--max_iter", 3, "--save_every", 100, "--augment", "flip", "--lr", "1e-2", "--seed", 3]
    logs = str(tmp_path / "logs")
    single = run_train(tiny(data_root, tmp_path / "one", *common, "--batch_size", 4), logs)
    assert single.process.exitcode == 0, single.stderr
    # the environment torchrun gives each worker (`torchrun --nproc_per_node 2 train.py ...`), without
    # paying for torchrun's own start-up here
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [start_train(tiny(data_root, tmp_path / "two", *common), logs, env={
        "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}, tag=f"rank{r}_") for r in range(2)]
    for r in ranks:
        assert r.wait(120) == 0, r.stderr
    assert ranks[1].stdout == ""  # rank 0 alone prints, logs and saves
    one = read_log(str(tmp_path / "one" / "ssd300_custom_log.csv"))
    two = read_log(str(tmp_path / "two" / "ssd300_custom_log.csv"))
    assert [r["iteration"] for r in two] == [1, 2, 3]
    for r1, r2 in zip(one, two):
        assert r2["loss_l"] == pytest.approx(r1["loss_l"], rel=1e-4)
        assert r2["loss_c"] == pytest.approx(r1["loss_c"], rel=1e-4)
    a = weights(str(tmp_path / "one" / "ssd300_custom_final.pth"))
    b = weights(str(tmp_path / "two" / "ssd300_custom_final.pth"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)  # float rounding only
    assert read_checkpoint(str(tmp_path / "two" / "ssd300_custom_final.pth"))["config"]["world_size"] == 2


def test_time_budget_stops_and_saves_the_final_checkpoint(data_root, tmp_path):
    run = run_train(tiny(data_root, tmp_path / "w", "--max_iter", 100000, "--time_budget", 0.5,
                         "--lr_schedule", "cosine"), str(tmp_path / "logs"))
    assert run.process.exitcode == 0, run.stderr
    assert "time budget of 0.5 s used" in run.stdout
    ckpt = read_checkpoint(str(tmp_path / "w" / "ssd300_custom_final.pth"))
    assert 1 <= ckpt["iteration"] < 100000
    assert ckpt["scheduler"]["last_epoch"] == ckpt["iteration"]


# ---------------------------------------------------------------------------------------------------------
# --max_iter auto: fill --time_budget
# ---------------------------------------------------------------------------------------------------------

def test_throughput_meter_times_the_iterations_after_the_first_few():
    meter = ThroughputMeter(start_iter=10, skip=2, measure=4)
    # iterations 11-12 are slow (start-up), then 0.25 s each; times are seconds since training started
    ends = {11: 3.0, 12: 3.5, 13: 3.75, 14: 4.0, 15: 4.25, 16: 4.5, 17: 4.75}
    results = [meter.observe(done, t) for done, t in ends.items()]
    assert results[:5] == [None] * 5 and results[6] is None  # one result, when iteration 16 has ended
    assert results[5] == Throughput(iterations=4, seconds=1.0, done=16, elapsed=4.5)
    assert results[5].per_second == 4.0


def test_fitted_max_iter_fills_the_rest_of_the_budget_at_the_measured_speed():
    measured = Throughput(iterations=20, seconds=10.0, done=25, elapsed=12.0)  # 2 it/s; 88 s of 100 left
    assert fit_max_iter(measured, 100.0, safety=1.0) == 25 + 176
    assert fit_max_iter(measured, 100.0, safety=0.98) == 25 + 172  # floor(172.48)
    assert fit_max_iter(measured, 10.0) == 25  # budget already used: the run ends at once
    assert scale_steps([80000, 100000, 120000], 120000, 1200) == [800, 1000, 1200]
    # the schedule follows: cosine over the new length, step decays at the scaled iterations
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, LRSchedule("cosine", 0, 1.0, [80000], 0.1, 120000))
    set_scheduler_iteration(sched, 50)
    set_schedule_length(sched, 100, [60])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # halfway through a 100-iteration cosine
    assert sched.lr_lambdas[0].steps == [60] and sched.state_dict()["lr_lambdas"][0]["max_iter"] == 100


def test_every_rank_gets_rank_0s_measurement(tmp_path):
    # each rank timed itself; all must choose the same count (or the ranks would train different lengths)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mine = [Throughput(20, 10.0, 25, 12.0), Throughput(20, 14.0, 25, 15.5)]
    assert share_in_two_processes(mine, str(tmp_path), port) == [repr(mine[0])] * 2


@pytest.mark.parametrize("argv, message", [
    (["--max_iter", "auto"], "--max_iter auto needs --time_budget SECONDS (the iterations are chosen to fill it) — "
                             "or give --max_iter a number"),
    (["--max_iter", "auto", "--time_budget", "60", "--lr_steps", "5"], "--lr_steps are iteration numbers, but "
     "--max_iter auto chooses the number of iterations while training — give --max_iter N, or leave the steps to "
     "the dataset config (scaled to the chosen length)"),
    (["--max_iter", "many"], "--max_iter must be a number of iterations or auto, got 'many' (see python train.py "
                             "--help)"),
])
def test_max_iter_auto_usage_errors_are_one_line(data_root, tmp_path, argv, message):
    with pytest.raises(UserError) as exc:
        train.main(tiny(data_root, tmp_path) + argv)
    assert exc.value.message == message and exc.value.code == 2


def test_max_iter_auto_is_chosen_once_and_a_resumed_fitted_run_keeps_it():
    base = ["--dataset", "custom", "--dataset_root", "x", "--max_iter", "auto", "--time_budget", "60"]
    ns, explicit = train.parse_args(base)
    s = resolve_settings(ns, explicit, None, False)
    assert s.max_iter_auto and s.max_iter == 120000 and s.max_iter_fit is None  # the dataset config's, until chosen
    fitted = {"max_iter": 62, "lr_steps": [41, 52, 62], "max_iter_fit": {"images_per_s": 15.9}}
    for argv in (base, base[:4]):  # the same command line again, or only --resume: the count the run chose
        ns, explicit = train.parse_args(argv)
        s = resolve_settings(ns, explicit, fitted, False)
        assert (s.max_iter, s.max_iter_auto, s.lr_steps, s.max_iter_fit) == (62, False, [41, 52, 62],
                                                                            {"images_per_s": 15.9})
    # a checkpoint written before the count was chosen: the resumed run chooses it (so it needs --time_budget)
    ns, explicit = train.parse_args(base[:4])
    s = resolve_settings(ns, explicit, {"max_iter": "auto"}, False)
    assert s.max_iter_auto
    with pytest.raises(UserError, match="--max_iter auto needs --time_budget"):
        validate(s, train.RANGES)


class _InjectedMeter:
    """Stands in for ThroughputMeter: 'measures' 1 iteration/s over iterations 2-3, with 56 s of the budget used."""

    def __init__(self, start_iter):
        self.at = start_iter + 3

    def observe(self, done, elapsed):
        return Throughput(iterations=2, seconds=2.0, done=done, elapsed=56.0) if done == self.at else None


def test_max_iter_auto_sets_the_schedule_from_the_measured_speed_and_resume_continues_it(data_root, tmp_path,
                                                                                          monkeypatch, capsys):
    monkeypatch.setattr(trainer, "ThroughputMeter", _InjectedMeter)
    args = ["--max_iter", "auto", "--time_budget", 60, "--lr_schedule", "cosine", "--save_every", 4,
            "--batch_norm", "--augment", "flip"]
    assert train.main(tiny(data_root, tmp_path / "a", *args)) == 0
    out = capsys.readouterr().out
    # 4 s left at 1 it/s (x 0.98 safety): 3 more iterations after the 3 done
    assert ("--max_iter auto: 2.0 img/s over iterations 2-3 (2.0 s) -> training 6 iterations to fill the 60 s "
            "budget (cosine LR schedule over them)") in out
    assert "training finished at iteration 6" in out
    final = read_checkpoint(str(tmp_path / "a" / "ssd300_custom_final.pth"))
    for ckpt in (final, read_checkpoint(str(tmp_path / "a" / "ssd300_custom_4.pth"))):
        assert ckpt["config"]["max_iter"] == 6 and ckpt["config"]["max_iter_fit"]["images_per_s"] == 2.0
        assert ckpt["scheduler"]["lr_lambdas"][0]["max_iter"] == 6
    assert final["iteration"] == 6
    a = read_log(str(tmp_path / "a" / "ssd300_custom_log.csv"))
    # after the choice the LR follows a cosine over 6 iterations (iteration i trains with lr(i - 1))
    assert [r["lr"] for r in a[3:]] == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * i / 6))
                                                      for i in (3, 4, 5)])
    # the same command line again with --resume: the run continues the chosen schedule exactly
    os.makedirs(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "ssd300_custom_4.pth", tmp_path / "b")
    assert train.main(tiny(data_root, tmp_path / "b", *args, "--resume", "latest")) == 0
    b = read_log(str(tmp_path / "b" / "ssd300_custom_log.csv"))
    assert [r["iteration"] for r in b] == [5, 6]
    assert [(r["loss"], r["lr"]) for r in a[4:]] == [(r["loss"], r["lr"]) for r in b]
    assert_same_weights(final["model"], weights(str(tmp_path / "b" / "ssd300_custom_final.pth")))
    assert "iterations 4..6 (--max_iter auto: 2.0 img/s measured)" in capsys.readouterr().out


def test_resume_names_the_flag_when_the_checkpoint_does_not_fit(tiny_dataset, make_checkpoint, tmp_path):
    argv = TINY + ["--dataset_root", str(tiny_dataset), "--train_split", "trainval", "--save_folder", str(tmp_path)]
    with pytest.raises(UserError, match="has the s2 stem, but this run trains the vgg stem — pass --stem s2"):
        train.main(argv + ["--batch_norm", "--resume", make_checkpoint(batch_norm=True, stem="s2")])
    with pytest.raises(UserError, match="is an SSD512, but this run trains an SSD300 — pass --size 512"):
        train.main(argv + ["--resume", make_checkpoint(size=512)])
    with pytest.raises(UserError, match=r"has 3 classes \(with background\) but the dataset has 6 — resume with"):
        train.main(argv + ["--resume", make_checkpoint(class_names=("a", "b"))])
    # what is compared is the checkpoint's ModelConfig (read off its shapes) against this run's
    wanted = ModelConfig(300, 6, 0.125, True, "s2")
    check_resume_architecture(ModelConfig(300, 6, 0.25, False, "s2"), wanted, "a.pth")  # width/BN: load_into
    with pytest.raises(UserError, match="--stem vgg"):
        check_resume_architecture(ModelConfig(300, 6, 0.125, True, "vgg"), wanted, "a.pth")


def test_test_hooks_are_read_from_the_environment_once():
    hooks = TestHooks.from_env({"SSD_TEST_INJECT_NAN_AT": "2, 5-7", "SSD_TEST_SAVE_DELAY": "0.25"})
    assert hooks.nan_at == {2, 5, 6, 7} and hooks.save_delay == 0.25
    assert TestHooks.from_env({}) == TestHooks() and not TestHooks().nan_at and TestHooks().save_delay == 0.0
    assert parse_iterations("3") == {3} and parse_iterations("") == set()


# every model variant the CLI offers: --stem vgg/s2 x --batch_norm on/off x two widths
@pytest.mark.parametrize("stem", ["vgg", "s2"])
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("width", ["0.125", "0.25"])
def test_eval_every_works_for_every_model_variant(tiny_dataset, tmp_path, capsys, stem, batch_norm, width):
    argv = TINY + ["--dataset_root", str(tiny_dataset), "--save_folder", str(tmp_path), "--width", width,
                   "--stem", stem, "--batch_norm" if batch_norm else "--no-batch_norm", "--max_iter", "2",
                   "--eval_every", "2", "--eval_batch_size", "2"]
    assert train.main(argv) == 0
    assert "eval at iteration 2: voc07 mAP" in capsys.readouterr().out
    rows = read_log(str(tmp_path / "ssd300_custom_eval.csv"))
    assert [r["iteration"] for r in rows] == [2]
    assert list(rows[0]) == ["iteration", "mAP"] + [f"AP_{c}" for c in ("circle", "square", "triangle", "star",
                                                                        "ring")]
    assert 0.0 <= rows[0]["mAP"] <= 1.0
    config = read_checkpoint(str(tmp_path / "ssd300_custom_final.pth"))["config"]
    assert (config["stem"], config["batch_norm"], config["width"]) == (stem, batch_norm, float(width))
