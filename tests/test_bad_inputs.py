"""Issue 9's bad-input catalogue through the CLIs (the cases not already covered by the CLI tests of
test_object_detection.py, test_eval_cli.py and test_train.py; docs/BAD_INPUTS.md maps every case to its test).

Each case: exit status != 0 (2 for usage errors), exactly one ``error: ...`` line on stderr naming the problem
(and the file), no traceback, and no output left behind. Most cases call a CLI's ``main`` through
``utils.errors.run_cli`` in this process (what ``python X.py`` runs, without paying the interpreter start-up per
case); a few run as real processes to show that nothing reaches the user as a traceback, and that a checkpoint
which would run code when unpickled is refused by every CLI without the code ever running.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, List, Sequence

import pytest
import torch

import eval as eval_cli
import object_detection as od_cli
import train as train_cli
from utils import export as export_cli
from utils.errors import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIS = {"train": train_cli.main, "eval": eval_cli.main, "od": od_cli.main, "export": export_cli.main}
TRAIN = ["--dataset", "custom", "--width", "0.125", "--batch_size", "2", "--num_workers", "0", "--warmup", "0",
         "--basenet", "none", "--max_iter", "1", "--log_every", "1", "--no-tensorboard"]
EVAL = ["--dataset", "custom", "--device", "cpu", "--num_workers", "0", "--batch_size", "2", "--no-progress"]


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for a checkpoint that runs code when loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory, make_checkpoint):
    """One tiny generated dataset (6 small images, 5 classes) and the model files the cases need.

    Not the shared ``tiny_dataset``: most cases copy this folder, so its images are kept small (64-96 px)."""
    from data.custom import read_labels
    from data.synthetic import generate_dataset

    folder = tmp_path_factory.mktemp("bad_inputs")
    ds = str(folder / "ds")
    generate_dataset(ds, 6, seed=0, size_range=((64, 96), (64, 96)))
    names = read_labels(ds)
    tiny = make_checkpoint(class_names=tuple(names))
    four_path = make_checkpoint(class_names=("a", "b", "c"))  # 3 classes + background: not the dataset's 5
    state = torch.load(tiny, map_location="cpu", weights_only=True)["model"]
    state["conf.0.weight"][0, 0, 0, 0] = float("nan")
    nan = str(folder / "nan.pth")
    torch.save(state, nan)
    data = open(tiny, "rb").read()
    truncated = str(folder / "truncated.pth")
    open(truncated, "wb").write(data[: len(data) // 2])
    text = str(folder / "notes.pth")
    open(text, "w").write("these are not weights\n")
    marker = str(folder / "MARKER_code_ran")
    evil = str(folder / "evil.pth")
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Payload(marker)}, evil)
    with open(os.path.join(ds, "ImageSets", "Main", "test.txt")) as fh:
        test_id = fh.read().split()[0]
    with open(os.path.join(ds, "ImageSets", "Main", "train.txt")) as fh:
        train_id = fh.read().split()[0]
    return SimpleNamespace(folder=str(folder), ds=ds, names=names, tiny=tiny, four=four_path, nan=nan,
                           truncated=truncated, text=text, evil=evil, marker=marker, test_id=test_id,
                           train_id=train_id, image=os.path.join(ds, "JPEGImages", test_id + ".jpg"))


def unwritable_folder(tmp_path) -> str:
    """A folder nobody can create files in: permission bits for users, sysfs for root (which ignores bits)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o555)
        return str(folder)
    return "/sys"


# ------------------------------------------------------------------------------------------------------
# damage applied to a fresh copy of the dataset
# ------------------------------------------------------------------------------------------------------

def _rm(root: str, *parts: str) -> None:
    path = os.path.join(root, *parts)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _write(root: str, rel: str, text: str) -> None:
    with open(os.path.join(root, rel), "w") as fh:
        fh.write(text)


def _add_object(root: str, image_id: str, name: str, box: Sequence[int]) -> None:
    """Append an <object> with ``box`` = (xmin, ymin, xmax, ymax) to the image's XML."""
    path = os.path.join(root, "Annotations", image_id + ".xml")
    with open(path) as fh:
        xml = fh.read()
    obj = (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
           f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")
    with open(path, "w") as fh:
        fh.write(xml.replace("</annotation>", obj + "</annotation>"))


def _ann(a, image_id):
    return os.path.join("Annotations", image_id + ".xml")


@dataclass
class Case:
    """``argv(a, d, t)`` with a = assets, d = the (damaged) dataset copy, t = tmp_path; ``needles(a, d, t)`` must
    all be in the error line; ``outputs(a, d, t)`` must not exist afterwards."""

    cli: str
    argv: Callable
    code: int
    needles: Callable
    damage: Callable = lambda a, d: None
    outputs: Callable = lambda a, d, t: [str(t / "run"), str(t / "ev"), str(t / "out.jpg"), str(t / "out.onnx")]
    no_cuda: bool = False


def _t(a, d, t, *extra):
    return TRAIN + ["--dataset_root", d, "--save_folder", str(t / "run")] + [str(e) for e in extra]


def _e(a, d, t, *extra, model=None):
    return EVAL + ["--trained_model", model or a.tiny, "--dataset_root", d, "--save_folder", str(t / "ev")] + \
        [str(e) for e in extra]


def _od(a, d, t, *extra, model=None):
    return [model or a.tiny, a.image.replace(a.ds, d), "-o", str(t / "out.jpg"), "--device", "cpu",
            "--no-progress"] + [str(e) for e in extra]


CASES = {
    # ---- dataset
    "dataset root missing [train]": Case("train", lambda a, d, t: _t(a, str(t / "nowhere"), t), 1,
                                         lambda a, d, t: ["dataset root not found", str(t / "nowhere")]),
    "no Annotations/ [train]": Case("train", _t, 1, lambda a, d, t: ["Annotations folder not found",
                                                                     os.path.join(d, "Annotations")],
                                    damage=lambda a, d: _rm(d, "Annotations")),
    "no JPEGImages/ [eval]": Case("eval", _e, 1, lambda a, d, t: ["JPEGImages folder not found",
                                                                  os.path.join(d, "JPEGImages")],
                                  damage=lambda a, d: _rm(d, "JPEGImages")),
    "split file missing [eval]": Case("eval", _e, 1, lambda a, d, t: ["split file not found",
                                                                      os.path.join(d, "ImageSets", "Main", "test.txt")],
                                      damage=lambda a, d: _rm(d, "ImageSets", "Main", "test.txt")),
    "empty split [train]": Case("train", _t, 1, lambda a, d, t: ["split is empty",
                                                                 os.path.join(d, "ImageSets", "Main", "train.txt")],
                                damage=lambda a, d: _write(d, os.path.join("ImageSets", "Main", "train.txt"), "\n\n")),
    "malformed XML [train]": Case("train", _t, 1, lambda a, d, t: ["malformed XML",
                                                                   os.path.join(d, _ann(a, a.train_id))],
                                  damage=lambda a, d: _write(d, _ann(a, a.train_id), "<annotation><object>")),
    "malformed XML [eval]": Case("eval", _e, 1, lambda a, d, t: ["malformed XML", os.path.join(d, _ann(a, a.test_id))],
                                 damage=lambda a, d: _write(d, _ann(a, a.test_id), "<annotation><object>")),
    "XML names an unknown class [eval]": Case("eval", _e, 1, lambda a, d, t: ["unknown class 'zebra'",
                                                                              os.path.join(d, _ann(a, a.test_id))],
                                              damage=lambda a, d: _add_object(d, a.test_id, "zebra", (2, 2, 20, 20))),
    "image listed but missing [train]": Case("train", _t, 1, lambda a, d, t: [
        "missing", os.path.join(d, "JPEGImages", a.train_id + ".jpg")],
        damage=lambda a, d: _rm(d, "JPEGImages", a.train_id + ".jpg")),
    "image unreadable [eval]": Case("eval", _e, 1, lambda a, d, t: [
        "cannot be decoded", os.path.join(d, "JPEGImages", a.test_id + ".jpg")],
        damage=lambda a, d: _write(d, os.path.join("JPEGImages", a.test_id + ".jpg"), "not a jpeg")),
    "labels.txt missing [eval]": Case("eval", _e, 1, lambda a, d, t: ["class list not found",
                                                                      os.path.join(d, "labels.txt")],
                                      damage=lambda a, d: _rm(d, "labels.txt")),
    "labels.txt with duplicates [train]": Case("train", _t, 1, lambda a, d, t: ["duplicate class name(s) 'circle'",
                                                                                os.path.join(d, "labels.txt")],
                                               damage=lambda a, d: _write(d, "labels.txt", "circle\nsquare\ncircle\n")),
    "COCO JSON missing [train]": Case("train", lambda a, d, t: _t(a, d, t, "--dataset", "COCO", "--train_split",
                                                                  "nothere"), 1,
                                      lambda a, d, t: ["COCO annotation file not found",
                                                       os.path.join(d, "annotations", "instances_nothere.json")]),
    "COCO JSON malformed [eval]": Case("eval", lambda a, d, t: _e(a, d, t, "--dataset", "COCO", "--set", "test"), 1,
                                       lambda a, d, t: ["malformed COCO JSON",
                                                        os.path.join(d, "annotations", "instances_test.json")],
                                       damage=lambda a, d: _write(d, os.path.join("annotations", "instances_test.json"),
                                                                  '{"images": [')),
    "COCO JSON missing for --coco [eval]": Case("eval", lambda a, d, t: _e(a, d, t, "--coco"), 1,
                                                lambda a, d, t: ["COCO annotation file not found",
                                                                 os.path.join(d, "annotations", "instances_test.json")],
                                                damage=lambda a, d: _rm(d, "annotations", "instances_test.json")),
    # ---- model files
    "truncated model file [eval]": Case("eval", lambda a, d, t: _e(a, d, t, model=a.truncated), 1,
                                        lambda a, d, t: ["truncated", a.truncated]),
    "non-checkpoint model file [eval]": Case("eval", lambda a, d, t: _e(a, d, t, model=a.text), 1,
                                             lambda a, d, t: ["not a PyTorch checkpoint", a.text]),
    "truncated model file [export]": Case("export", lambda a, d, t: [a.truncated, "-o", str(t / "out.onnx")], 1,
                                          lambda a, d, t: ["truncated", a.truncated]),
    "class count differs [train --resume]": Case("train", lambda a, d, t: _t(a, d, t, "--resume", a.four), 1,
                                                 lambda a, d, t: ["has 4 classes", "the dataset has 6", a.four]),
    "class count differs [eval]": Case("eval", lambda a, d, t: _e(a, d, t, model=a.four), 1,
                                       lambda a, d, t: ["model's 3 classes do not match the dataset's 5"]),
    "class count differs [object_detection --num_classes]": Case(
        "od", lambda a, d, t: _od(a, d, t, "--num_classes", 4), 1,
        lambda a, d, t: ["checkpoint has 6 classes", "built for 4", a.tiny]),
    "size differs [train --resume --size 512]": Case("train", lambda a, d, t: _t(a, d, t, "--resume", a.tiny,
                                                                                 "--size", 512), 1,
                                                     lambda a, d, t: ["is an SSD300", "trains an SSD512", a.tiny]),
    "size differs [eval --size 512]": Case("eval", lambda a, d, t: _e(a, d, t, "--size", 512), 1,
                                           lambda a, d, t: ["is an SSD300, but --size 512", a.tiny]),
    "size differs [object_detection --size 512]": Case("od", lambda a, d, t: _od(a, d, t, "--size", 512), 1,
                                                       lambda a, d, t: ["is an SSD300, but --size 512", a.tiny]),
    "NaN weights [eval]": Case("eval", lambda a, d, t: _e(a, d, t, model=a.nan), 1,
                               lambda a, d, t: ["NaN/inf values in conf.0.weight", a.nan]),
    "NaN weights [object_detection]": Case("od", lambda a, d, t: _od(a, d, t, model=a.nan), 1,
                                           lambda a, d, t: ["NaN/inf values in conf.0.weight", a.nan]),
    "NaN weights [export]": Case("export", lambda a, d, t: [a.nan, "-o", str(t / "out.onnx")], 1,
                                 lambda a, d, t: ["NaN/inf values", a.nan]),
    # ---- flags (usage errors: status 2)
    "--size 400 [train]": Case("train", lambda a, d, t: _t(a, d, t, "--size", 400), 2,
                               lambda a, d, t: ["--size", "400"]),
    "--size 400 [object_detection]": Case("od", lambda a, d, t: _od(a, d, t, "--size", 400), 2,
                                          lambda a, d, t: ["--size 400 is not supported"]),
    "--size 400 [export]": Case("export", lambda a, d, t: [a.tiny, "-o", str(t / "out.onnx"), "--size", "400"], 2,
                                lambda a, d, t: ["--size", "400"]),
    "--batch 0 [export]": Case("export", lambda a, d, t: [a.tiny, "-o", str(t / "out.onnx"), "--batch", "0"], 2,
                               lambda a, d, t: ["--batch"]),
    "--device cuda without CUDA [object_detection]": Case("od", lambda a, d, t: _od(a, d, t, "--device", "cuda"), 2,
                                                          lambda a, d, t: ["CUDA is not available"], no_cuda=True),
    "--device cuda without CUDA [train]": Case("train", lambda a, d, t: _t(a, d, t, "--device", "cuda"), 2,
                                               lambda a, d, t: ["CUDA is not available"], no_cuda=True),
    # ---- outputs
    "output folder not writable [train --save_folder]": Case(
        "train", lambda a, d, t: TRAIN + ["--dataset_root", d, "--save_folder",
                                          os.path.join(unwritable_folder(t), "run")], 1,
        lambda a, d, t: ["--save_folder is not writable"],
        outputs=lambda a, d, t: [os.path.join(unwritable_folder(t), "run")]),
    "output folder not writable [eval --save_folder]": Case(
        "eval", lambda a, d, t: EVAL + ["--trained_model", a.tiny, "--dataset_root", d, "--save_folder",
                                        os.path.join(unwritable_folder(t), "ev")], 1,
        lambda a, d, t: ["--save_folder is not writable"],
        outputs=lambda a, d, t: [os.path.join(unwritable_folder(t), "ev")]),
    "output folder not writable [eval --json]": Case(
        "eval", lambda a, d, t: _e(a, d, t, "--json", os.path.join(unwritable_folder(t), "s.json")), 1,
        lambda a, d, t: ["--json folder is not writable"]),
    "unsupported output extension [object_detection image]": Case(
        "od", lambda a, d, t: [a.tiny, a.image.replace(a.ds, d), "-o", str(t / "out.xyz")], 2,
        lambda a, d, t: ["unsupported extension", str(t / "out.xyz")],
        outputs=lambda a, d, t: [str(t / "out.xyz")]),
    "output == input [object_detection image]": Case(
        "od", lambda a, d, t: [a.tiny, a.image.replace(a.ds, d), "-o", a.image.replace(a.ds, d)], 2,
        lambda a, d, t: ["output is the input file"], outputs=lambda a, d, t: []),
    "output == input [object_detection folder]": Case(
        "od", lambda a, d, t: [a.tiny, os.path.join(d, "JPEGImages"), "-o", os.path.join(d, "JPEGImages")], 2,
        lambda a, d, t: ["output folder is the input folder"], outputs=lambda a, d, t: []),
    "image input unreadable [object_detection]": Case(
        "od", _od, 1, lambda a, d, t: ["cannot read image", a.image.replace(a.ds, d)],
        damage=lambda a, d: _write(d, os.path.relpath(a.image, a.ds), "not a jpeg")),
    # ---- results files
    "results folder missing [eval --results_dir]": Case(
        "eval", lambda a, d, t: ["--results_dir", str(t / "no_results"), "--dataset", "custom", "--dataset_root", d],
        1, lambda a, d, t: ["results folder not found", str(t / "no_results")]),
}


def run_in_process(cli: str, argv: List[str], capsys):
    """``python <cli> argv`` without a new interpreter: (exit status, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(CLIS[cli], argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def assert_one_error_line(code, err, expected_code, needles):
    """Exit status as expected; exactly one ``error:`` line, the last one, holding every needle; no traceback.

    (eval.py's progress line "evaluating ... on ..." may come before it.)"""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == expected_code, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: "), err
    assert sum(ln.startswith("error:") for ln in lines) == 1, err
    assert all(ln.startswith(("error: ", "evaluating ")) for ln in lines), err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


@pytest.fixture
def dataset_copy(assets, tmp_path):
    d = str(tmp_path / "data")
    shutil.copytree(assets.ds, d)
    return d


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_one_clear_line_and_leaves_nothing(name, assets, dataset_copy, tmp_path, capsys,
                                                                monkeypatch):
    case = CASES[name]
    case.damage(assets, dataset_copy)
    if case.no_cuda:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = sorted(os.listdir(dataset_copy))
    code, _, err = run_in_process(case.cli, case.argv(assets, dataset_copy, tmp_path), capsys)
    assert_one_error_line(code, err, case.code, case.needles(assets, dataset_copy, tmp_path))
    for path in case.outputs(assets, dataset_copy, tmp_path):
        assert not os.path.exists(path), path
    assert sorted(os.listdir(dataset_copy)) == before  # nothing written into the dataset either
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("cli, box, words", [
    ("eval", (10, 10, 500, 40), "reach outside"),
    ("train", (5, 5, 5, 30), "zero-area"),
], ids=["box outside the image [eval]", "zero-area box [train]"])
def test_boxes_outside_the_image_or_without_area_are_fixed_with_one_warning_line(cli, box, words, assets,
                                                                                dataset_copy, tmp_path, capsys):
    """Not fatal (VOC itself has boxes touching the border): clipped / dropped, one line naming the XML."""
    image_id = assets.test_id if cli == "eval" else assets.train_id
    _add_object(dataset_copy, image_id, assets.names[0], box)
    argv = _e(assets, dataset_copy, tmp_path) if cli == "eval" else _t(assets, dataset_copy, tmp_path)
    code, _, err = run_in_process(cli, argv, capsys)
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and words in warnings[0], err
    assert os.path.join(dataset_copy, "Annotations", image_id + ".xml") in warnings[0]
    assert "Traceback" not in err and "UserWarning" not in err and "warnings.warn" not in err, err


# ------------------------------------------------------------------------------------------------------
# real processes
# ------------------------------------------------------------------------------------------------------

def run_processes(commands, cwd=ROOT):
    """Start every command at once (each pays the interpreter and torch start-up), then collect them."""
    procs = [subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=cwd) for cmd in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_payload_of_the_crafted_checkpoint_really_runs_code_when_unpickled(assets, tmp_path):
    """The control for the test below: the same kind of file, loaded the unsafe way, creates its marker."""
    live = str(tmp_path / "live.pth")
    marker = str(tmp_path / "live_marker")
    torch.save({"payload": _Payload(marker)}, live)
    torch.load(live, weights_only=False)
    assert os.path.exists(marker)


def test_crafted_code_executing_checkpoint_is_refused_by_every_cli(assets, tmp_path):
    evil = assets.evil
    outputs = [str(tmp_path / "run"), str(tmp_path / "ev"), str(tmp_path / "out.jpg"), str(tmp_path / "out.onnx")]
    commands = {
        "train.py --resume": ["train.py", *TRAIN, "--dataset_root", assets.ds, "--save_folder", outputs[0],
                              "--resume", evil],
        "eval.py --trained_model": ["eval.py", *EVAL, "--dataset_root", assets.ds, "--save_folder", outputs[1],
                                    "--trained_model", evil],
        "object_detection.py MODEL": ["object_detection.py", evil, assets.image, "-o", outputs[2], "--device", "cpu"],
        "python -m utils.export MODEL": ["-m", "utils.export", evil, "-o", outputs[3]],
    }
    for name, proc in zip(commands, run_processes(list(commands.values()))):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"error: refusing to load {evil}"), (name, proc.stderr)
    assert not os.path.exists(assets.marker)
    for path in outputs:
        assert not os.path.exists(path), path


def test_errors_found_late_reach_the_user_as_one_line_from_a_real_process(assets, dataset_copy, tmp_path):
    """Errors raised after setup (writing results, decoding an image mid-run) and usage errors of the export
    CLI: still one line, the right status, no traceback, nothing written."""
    locked = unwritable_folder(tmp_path)
    _write(dataset_copy, os.path.join("JPEGImages", assets.test_id + ".jpg"), "not a jpeg")
    commands = [
        (["train.py", *TRAIN, "--dataset_root", assets.ds, "--save_folder", os.path.join(locked, "run")], 1,
         "--save_folder is not writable"),
        (["eval.py", *EVAL, "--trained_model", assets.tiny, "--dataset_root", assets.ds,
          "--save_folder", os.path.join(locked, "ev")], 1, "--save_folder is not writable"),
        (["eval.py", *EVAL, "--trained_model", assets.tiny, "--dataset_root", dataset_copy,
          "--save_folder", str(tmp_path / "ev")], 1, "cannot be decoded"),
        (["-m", "utils.export", assets.tiny, "-o", str(tmp_path / "out.onnx"), "--size", "400"], 2, "--size"),
    ]
    for (cmd, code, words), proc in zip(commands, run_processes([c for c, _, _ in commands])):
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
        assert proc.returncode == code and "Traceback" not in proc.stderr, (cmd, proc.stderr)
        assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], (cmd, proc.stderr)
        assert words in errors[0], (cmd, proc.stderr)
        assert "usage:" not in proc.stderr, (cmd, proc.stderr)
    for path in (os.path.join(locked, "run"), os.path.join(locked, "ev"), str(tmp_path / "ev"),
                 str(tmp_path / "out.onnx")):
        assert not os.path.exists(path), path
