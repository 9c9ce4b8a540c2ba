"""object_detection.py, utils/media/detect.py and utils/media/draw.py: annotated video/image output, JSON, audio,
bad inputs via the CLI."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import object_detection as od
from data.voc0712 import VOC_CLASSES
from tests.video_helpers import audio_codec, decode_all, ffmpeg, make_video, ramp_frames, truncated_video
from utils.media.detect import detect_images, detect_video
from utils.media.draw import DrawStyle, clamp_boxes, draw_detections, palette, text_color
from utils.errors import UserError, run_cli
from utils.media.ffmpeg import probe_video
from utils.media.images import read_image, write_image
from utils.media.video_reader import VideoReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "object_detection.py")


class StubPredictor:
    """Deterministic detections at known places: frame i (grey level 20 + 8 i) gets a 'cat' box
    ``[6 + i, 10, 40 + i, 36]`` scored 0.9 and a 'dog' box scored 0.3 (below the 0.6 threshold)."""

    class_names = ["cat", "dog"]

    def __init__(self):
        self.batch_sizes = []

    @staticmethod
    def box(i):
        return [6 + i, 10, 40 + i, 36]

    def predict(self, images):
        self.batch_sizes.append(len(images))
        out = []
        for im in images:
            i = int(round((float(im[:, :5].mean()) - 20) / 8))
            out.append(SimpleNamespace(boxes=np.array([self.box(i), [0, 0, 20, 20]], np.float32),
                                       scores=np.array([0.9, 0.3], np.float32),
                                       labels=np.array([1, 2], np.int64)))
        return out


def close(pixel, color, tol=12):
    return np.abs(pixel.astype(int) - np.asarray(color, int)).max() <= tol


# --------------------------------------------------------------------------------------------
# video through the pipeline (stub predictor)

def test_stub_boxes_appear_where_expected_in_decoded_frames_and_json(tmp_path):
    w, h = 65, 49  # odd size: kept exactly
    src = make_video(tmp_path / "in.mp4", ramp_frames(24, h, w))
    out, js = str(tmp_path / "out" / "det.mp4"), str(tmp_path / "det.json")
    stub = StubPredictor()
    summary = detect_video(stub, VideoReader(src), out, threshold=0.6, batch_size=5, crf=0, json_path=js,
                              progress=False)
    assert stub.batch_sizes == [5, 5, 5, 5, 4]
    assert summary.frames == 24 and summary.per_class == {"cat": 24}
    info = probe_video(out)
    assert (info.width, info.height, info.fps, info.n_frames) == (w, h, 24, 24)
    frames = decode_all(out)
    assert frames.shape == (24, h, w, 3)
    cat = palette(3)[1]
    for i, frame in enumerate(frames):
        level = 20 + 8 * i  # frames stay in order: background of output frame i is input frame i's
        assert close(frame[45, 2], [level] * 3, 4), i
        x1, y1, x2, y2 = StubPredictor.box(i)
        assert close(frame[30, x1], cat) and close(frame[30, x2], cat) and close(frame[y2, x1 + 10], cat), i
        assert close(frame[30, x1 + 3], [level] * 3, 4), i  # inside the box: untouched
        assert close(frame[5, 0], [level] * 3, 4), i  # the 0.3 'dog' box is below threshold: not drawn
    log = json.load(open(js))
    assert log["class_names"] == ["cat", "dog"] and log["width"] == w and log["fps"] == 24
    assert [f["frame"] for f in log["frames"]] == list(range(24))
    for i, f in enumerate(log["frames"]):
        assert f["time"] == pytest.approx(i / 24, abs=1e-4)
        assert f["detections"] == [{"class": "cat", "label": 1, "score": 0.9, "box": StubPredictor.box(i)}]


def test_audio_is_copied_and_trimmed_or_dropped(tmp_path):
    src = make_video(tmp_path / "in.mp4", ramp_frames(24, 48, 64), audio="aac")
    kept, dropped = str(tmp_path / "kept.mp4"), str(tmp_path / "dropped.mp4")
    detect_video(StubPredictor(), VideoReader(src, max_frames=12), kept, progress=False)
    detect_video(StubPredictor(), VideoReader(src), dropped, audio=False, progress=False)
    assert audio_codec(kept) == "aac" and probe_video(kept).n_frames == 12
    assert probe_video(kept).duration < 0.75  # the audio is cut to the 12 frames (0.5 s) written
    assert audio_codec(dropped) is None and len(decode_all(dropped)) == 24
    assert sorted(os.listdir(tmp_path)) == ["dropped.mp4", "in.mp4", "kept.mp4"]


def test_failure_mid_video_leaves_no_output(tmp_path):
    src = truncated_video(tmp_path, faststart=True)
    out, js = tmp_path / "o" / "out.mp4", tmp_path / "o" / "out.json"
    os.makedirs(out.parent)
    with pytest.raises(UserError, match="truncated"):
        detect_video(StubPredictor(), VideoReader(src), str(out), json_path=str(js), progress=False)
    assert os.listdir(out.parent) == []


def test_images_and_folder_are_annotated_atomically(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (h, w) in enumerate([(48, 64), (60, 50), (49, 65)]):
        write_image(str(folder / f"im{i}.png"), np.full((h, w, 3), 20 + 8 * i, np.uint8))
    inputs = [str(folder / f"im{i}.png") for i in range(3)]
    outputs = [str(tmp_path / "out" / f"im{i}.png") for i in range(3)]
    js = str(tmp_path / "imgs.json")
    summary = detect_images(StubPredictor(), inputs, outputs, batch_size=2, json_path=js, progress=False)
    assert summary.frames == 3 and sorted(os.listdir(tmp_path / "out")) == ["im0.png", "im1.png", "im2.png"]
    for i, path in enumerate(outputs):
        img = read_image(path)
        assert close(img[30, StubPredictor.box(i)[0]], palette(3)[1], 0)  # png: exact
    log = json.load(open(js))
    assert [f["file"] for f in log["frames"]] == ["im0.png", "im1.png", "im2.png"]
    assert (log["frames"][1]["width"], log["frames"][1]["height"]) == (50, 60)
    # an unreadable image anywhere: nothing written
    (folder / "im1.png").write_bytes(b"\x89PNG broken")
    outputs2 = [str(tmp_path / "out2" / f"im{i}.png") for i in range(3)]
    with pytest.raises(UserError, match="im1.png"):
        detect_images(StubPredictor(), inputs, outputs2, progress=False)
    assert not (tmp_path / "out2").exists()
    assert sorted(os.listdir(tmp_path)) == ["imgs", "imgs.json", "out"]


# --------------------------------------------------------------------------------------------
# drawing

def test_draw_clamps_boxes_to_frame_and_skips_invisible_ones():
    img = np.zeros((80, 100, 3), np.uint8)
    boxes = np.array([[-30, -30, 50, 60], [200, 10, 300, 50], [np.nan, 0, 10, 10]], np.float32)
    draw_detections(img, boxes, np.array([1, 2, 1]), np.array([0.9, 0.8, 0.7]), ["a", "b"])
    color = palette(3)[1]
    assert all(close(img[y, 0], color, 0) for y in range(30, 60))  # left edge clamped onto column 0
    assert all(close(img[60, x], color, 0) for x in range(0, 50))
    assert not (img == palette(3)[2]).all(axis=2).any()  # the box outside the frame: not drawn
    pts, visible = clamp_boxes(boxes, 80, 100)
    assert visible.tolist() == [True, False, False]
    assert pts[0].tolist() == [0, 0, 50, 60]


def test_tag_stays_inside_frame_with_legible_text():
    h, w = 120, 160
    img = np.full((h, w, 3), 128, np.uint8)
    draw_detections(img, np.array([[150, 2, 159, 119]]), np.array([1]), np.array([0.95]), ["traffic light"])
    fill = palette(2)[1]
    filled = (img == fill).all(axis=2)
    ys, xs = np.nonzero(filled)
    assert xs.max() == w - 1 and xs.min() < 150 - 20  # tag pushed left to fit, its right end at the edge
    assert ys.min() >= 0 and ys.min() <= 3  # at the frame's top the tag goes inside the box
    tag = img[ys.min():ys.max() + 1, xs.min():w]
    ink = text_color(fill)
    assert (np.abs(tag.astype(int) - ink).max(axis=2) < 60).sum() > 20  # text drawn in the contrasting colour
    assert text_color((255, 255, 0)) == (0, 0, 0) and text_color((0, 0, 128)) == (255, 255, 255)


def test_palette_is_deterministic_distinct_and_style_scales_with_frame():
    p = palette(81)
    assert len({tuple(c) for c in p}) == 81
    assert (palette(5) == p[:5]).all()
    small, big = DrawStyle.for_frame(240, 320), DrawStyle.for_frame(1080, 1920)
    assert big.font_scale > 2 * small.font_scale and big.line > small.line


# --------------------------------------------------------------------------------------------
# the CLI with a real (tiny, random) checkpoint, in-process

@pytest.fixture(scope="module")
def tiny_model(make_checkpoint):
    """A bare state_dict (as ssd.pytorch files are) of a 21-class model: the CLI names its classes VOC's."""
    return make_checkpoint(class_names=VOC_CLASSES, bare=True)


def test_cli_video_keeps_frames_fps_size_audio_and_writes_json(tmp_path, tiny_model, capsys):
    src = make_video(tmp_path / "in.mp4", ramp_frames(10, 49, 65), audio="aac")
    out, js = str(tmp_path / "res" / "out.mp4"), str(tmp_path / "res" / "out.json")
    assert od.main([tiny_model, src, "-o", out, "--json", js, "--batch_size", "4", "--threshold", "0.01",
                    "--device", "cpu", "--no-progress"]) == 0
    info = probe_video(out)
    assert (info.width, info.height, info.fps, info.n_frames, info.has_audio) == (65, 49, 24, 10, True)
    log = json.load(open(js))
    assert len(log["frames"]) == 10 and len(log["class_names"]) == 20
    n_dets = sum(len(f["detections"]) for f in log["frames"])
    assert n_dets > 0 and all(d["score"] >= 0.01 for f in log["frames"] for d in f["detections"])
    printed = capsys.readouterr().out
    assert "frames: 10" in printed and f"output: {out}" in printed
    assert f"detections (score >= 0.01): {n_dets}" in printed
    # --no-audio, --crf, --max_frames
    out2 = str(tmp_path / "res" / "silent.mkv")
    assert od.main([tiny_model, src, "-o", out2, "--no-audio", "--crf", "30", "--max_frames", "4",
                    "--no-progress"]) == 0
    info2 = probe_video(out2)
    assert (info2.width, info2.height, info2.has_audio, len(decode_all(out2))) == (65, 49, False, 4)


def test_cli_image_and_folder_inputs_default_outputs(tmp_path, tiny_model, monkeypatch):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        write_image(str(folder / f"p{i}.jpg"), np.full((40 + i, 50, 3), 90, np.uint8))
    monkeypatch.chdir(tmp_path)
    assert od.main([tiny_model, str(folder / "p0.jpg"), "--no-progress"]) == 0
    assert (folder / "p0_detected.jpg").exists()
    os.remove(folder / "p0_detected.jpg")
    assert od.main([tiny_model, "pics", "--no-progress", "--batch_size", "2"]) == 0
    assert sorted(os.listdir(tmp_path / "pics_detected")) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert read_image(str(tmp_path / "pics_detected" / "p2.jpg")).shape == (42, 50, 3)


# --------------------------------------------------------------------------------------------
# bad inputs through the CLI: one line on stderr, exit != 0, no traceback, nothing left behind

def run_scripts(arg_lists, cwd):
    """Run the CLI once per argument list: the first as a real process (the script's own entry point), the others
    in-process through ``run_cli`` (the same code path, without paying the interpreter and torch start-up each)."""
    proc = subprocess.run([sys.executable, SCRIPT, *arg_lists[0]], capture_output=True, text=True, cwd=cwd,
                          timeout=300)
    results = [proc]
    for args in arg_lists[1:]:
        err = io.StringIO()
        with contextlib.chdir(cwd), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            run_cli(od.main, args)
        results.append(subprocess.CompletedProcess(args, exit_info.value.code, "", err.getvalue()))
    return results


def _unwritable_folder(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        os.chmod(folder, 0o555)
        return str(folder)
    return "/sys"  # root ignores permission bits; sysfs refuses new files even for root


def _assert_one_line_error(proc, expected, case):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, case
    assert "Traceback" not in proc.stderr, (case, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (case, proc.stderr)


def test_cli_bad_inputs_fail_with_one_clear_line(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    good = make_video(work / "good.mp4", ramp_frames(4, 48, 64))
    (work / "empty.mp4").write_bytes(b"")
    (work / "notes.mp4").write_text("not a video")
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=24", "-frames:v", "0", "-c:v", "libx264",
           str(work / "zero.avi"))
    cut = truncated_video(work, faststart=False)
    model = str(work / "model.pth")  # never loaded: every case below fails before the model is read
    open(model, "wb").write(b"x")
    locked = _unwritable_folder(tmp_path)
    before = sorted(os.listdir(work))
    cases = [
        (["missing.mp4"], "input not found"),
        (["empty.mp4"], "empty"),
        (["notes.mp4"], "not a video"),
        ([cut], "truncated"),
        (["zero.avi"], "zero frames"),
        ([good, "-o", "out.webm"], "unsupported extension"),
        ([good, "-o", good], "output is the input"),
        ([good, "-o", os.path.join(locked, "out.mp4")], "not writable"),
        ([good, "--batch_size", "0"], "--batch_size"),
        ([good, "--crf", "99"], "--crf"),
        ([good, "--quality", "3", "--crf", "20"], "not allowed with"),
        (["pics_missing.jpg"], "input not found"),
    ]
    for (args, expected), proc in zip(cases, run_scripts([[model, *args] for args, _ in cases], cwd=work)):
        _assert_one_line_error(proc, expected, args)
    assert sorted(os.listdir(work)) == before
    assert not os.path.exists(os.path.join(locked, "out.mp4"))


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("bad_models")
    good = folder / "good.pth"
    data = open(tiny_model, "rb").read()
    good.write_bytes(data)
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "notes.pth").write_text("not a checkpoint")
    return folder


def test_cli_bad_models_and_decode_time_errors_fail_with_one_clear_line(tmp_path, bad_models):
    work = tmp_path / "work"
    work.mkdir()
    good = make_video(work / "good.mp4", ramp_frames(4, 48, 64))
    cut = truncated_video(work, faststart=True)  # readable header, data cut: found while decoding
    before = sorted(os.listdir(work))
    model = str(bad_models / "good.pth")
    cases = [
        ([str(bad_models / "missing.pth"), good], "model file not found"),
        ([str(bad_models / "truncated.pth"), good], "truncated"),
        ([str(bad_models / "notes.pth"), good], str(bad_models / "notes.pth")),
        ([model, cut, "--json", "dets.json"], "truncated"),
    ]
    for (args, expected), proc in zip(cases, run_scripts([[*args, "--device", "cpu"] for args, _ in cases],
                                                         cwd=work)):
        _assert_one_line_error(proc, expected, args)
    assert sorted(os.listdir(work)) == before


# --------------------------------------------------------------------------------------------
# --only (issue 18.8) and --show (issue 18.7)

def test_only_keeps_the_named_classes_in_drawing_json_and_counts(tmp_path):
    src = make_video(tmp_path / "in.mp4", ramp_frames(6, 48, 64))
    out, js = str(tmp_path / "out.mp4"), str(tmp_path / "out.json")
    summary = detect_video(StubPredictor(), VideoReader(src), out, threshold=0.2, json_path=js, progress=False,
                           only=[2])
    assert summary.per_class == {"dog": 6}
    assert all([d["class"] for d in f["detections"]] == ["dog"] for f in json.load(open(js))["frames"])
    for i, frame in enumerate(decode_all(out)):
        assert close(frame[30, StubPredictor.box(i)[0]], [20 + 8 * i] * 3, 4)  # the cat box is not drawn


def test_show_receives_every_annotated_frame(tmp_path):
    src = make_video(tmp_path / "in.mp4", ramp_frames(5, 48, 64))
    shown = []
    detect_video(StubPredictor(), VideoReader(src), str(tmp_path / "out.mp4"), progress=False,
                 show=lambda frame: shown.append(frame.copy()))
    assert len(shown) == 5
    assert all(close(f[30, StubPredictor.box(i)[0]], palette(3)[1]) for i, f in enumerate(shown))


def _run_in_process(args, cwd):
    err = io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(SystemExit) as exit_info:
        run_cli(od.main, args)
    return exit_info.value.code, err.getvalue()


def test_cli_only_filters_and_an_unknown_name_lists_the_models_classes(tmp_path, make_checkpoint):
    model = make_checkpoint()  # classes: circle, square, triangle, star, ring
    src = make_video(tmp_path / "in.mp4", ramp_frames(4, 48, 64))
    js = str(tmp_path / "out.json")
    code, err = _run_in_process([model, src, "-o", "out.mp4", "--only", "ring,star", "--threshold", "0.01",
                                 "--json", js, "--device", "cpu"], tmp_path)
    assert code == 0, err
    classes = {d["class"] for f in json.load(open(js))["frames"] for d in f["detections"]}
    assert classes and classes <= {"ring", "star"}
    code, err = _run_in_process([model, src, "-o", "other.mp4", "--only", "ring,person", "--device", "cpu"],
                                tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert "'person' is not a class of this model" in err and "circle, square, triangle, star, ring" in err
    assert not os.path.exists(tmp_path / "other.mp4")


def test_cli_show_without_a_gui_opencv_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("utils.media.preview.gui_backend", lambda: None)  # as with the default headless OpenCV
    src = make_video(tmp_path / "in.mp4", ramp_frames(2, 48, 64))
    open(tmp_path / "model.pth", "wb").write(b"x")  # never loaded: refused before
    code, err = _run_in_process(["model.pth", src, "--show"], tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --show needs OpenCV with a GUI") and "pip install opencv-python" in err
