"""Issue 18, video items: every frame kept and the sound whole, audio codecs each container defines, a full disk
while writing, presentation times in the JSON. Test inputs are made with the bundled ffmpeg (lavfi testsrc2 / sine),
tiny and 1-3 s long; frames are counted by decoding with ffmpeg itself (no resampling)."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

import object_detection as od
from tests.disk_helpers import small_disk
from tests.video_helpers import NoDetections, audio_codec, audio_end, count_frames, ffmpeg, make_clip
from utils.errors import UserError, run_cli
from utils.media.detect import detect_video
from utils.media.video_reader import VideoReader
from utils.media.video_writer import VideoWriter

# Audio codecs each container defines a standard mapping for (written from the specifications, independently of
# utils.media.video_writer.CARRIED_AUDIO): MP4 (MP4 registration authority / ISO 14496-14), QuickTime, Matroska's
# codec ID list, AVI's WAVE format tags.
STANDARD_AUDIO = {
    ".mp4": {"aac", "mp3", "alac", "ac3", "eac3"},
    ".mov": {"aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"},
    ".mkv": {"aac", "mp3", "ac3", "eac3", "flac", "vorbis", "opus", "alac", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
    ".avi": {"mp3", "mp2", "ac3", "pcm_s16le", "pcm_u8"},
}


# --------------------------------------------------------------------------------------------
# 18.1 frames out = frames in, sound kept whole

@pytest.mark.parametrize("case", [
    dict(audio=None),
    dict(audio=True),                                  # AAC priming, audio cut by -shortest: the clip
    dict(audio=True, audio_seconds=1.4),               # sound ends early
    dict(audio=True, audio_seconds=3.0),               # sound goes on after the last frame
    dict(audio=True, audio_seconds=1.0, delay=0.6),    # sound starts late
], ids=["silent", "same-length", "shorter", "longer", "late"])
def test_every_frame_is_kept_and_the_sound_whole(tmp_path, case):
    src = make_clip(tmp_path / "in.mp4", **case)
    out = str(tmp_path / "out.mp4")
    summary = detect_video(NoDetections(), VideoReader(src), out, progress=False)
    assert count_frames(src) == 50
    assert summary.frames == 50 and count_frames(out) == 50
    if case["audio"]:
        assert audio_end(out) == pytest.approx(audio_end(src), abs=0.05)
    else:
        assert audio_codec(out) is None


def test_mkv_with_longer_sound_keeps_frames_and_sound(tmp_path):
    src = make_clip(tmp_path / "in.mkv", seconds=1, fps=30, audio=True, audio_seconds=2.5, codec="libopus")
    out = str(tmp_path / "out.mkv")
    detect_video(NoDetections(), VideoReader(src), out, progress=False)
    assert count_frames(out) == count_frames(src) == 30
    assert audio_codec(out) == "opus" and audio_end(out) == pytest.approx(audio_end(src), abs=0.05)


@pytest.mark.parametrize("limit", [dict(max_frames=20), dict(max_seconds=0.8)])
def test_a_run_cut_short_on_purpose_cuts_the_sound_with_it(tmp_path, limit):
    src = make_clip(tmp_path / "in.mp4", audio=True, audio_seconds=2)
    out = str(tmp_path / "out.mp4")
    detect_video(NoDetections(), VideoReader(src, **limit), out, progress=False)
    assert count_frames(out) == 20 and audio_end(out) == pytest.approx(0.8, abs=0.05)


# --------------------------------------------------------------------------------------------
# 18.2 audio that plays: copied where the container defines the codec, re-encoded elsewhere

@pytest.fixture(scope="module")
def sound_sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sound")
    specs = {"vorbis": ("libvorbis", ".mkv"), "opus": ("libopus", ".mkv"), "pcm_s16le": ("pcm_s16le", ".mkv"),
             "flac": ("flac", ".mkv"), "mp3": ("libmp3lame", ".mp4"), "aac": ("aac", ".mp4")}
    return {name: make_clip(folder / f"{name}{ext}", seconds=0.4, fps=10, audio=True, audio_seconds=0.4,
                            codec=encoder) for name, (encoder, ext) in specs.items()}


@pytest.mark.parametrize("ext", [".mp4", ".mov", ".mkv", ".avi"])
def test_output_audio_codec_is_one_the_container_defines(tmp_path, sound_sources, ext):
    for name, src in sound_sources.items():
        assert audio_codec(src) == name
        out = str(tmp_path / f"{name}{ext}")
        with VideoWriter(out, 64, 48, 10, audio_from=src) as writer:
            for _ in range(4):
                writer.write(np.zeros((48, 64, 3), np.uint8))
        got = audio_codec(out)
        assert got in STANDARD_AUDIO[ext], (name, ext, got)
        if name in STANDARD_AUDIO[ext]:
            assert got == name and writer.notes == []  # copied, not re-encoded
        else:
            assert len(writer.notes) == 1 and f"{name} →" in writer.notes[0]
        assert count_frames(out) == 4


# --------------------------------------------------------------------------------------------
# 18.4 a full disk while writing the video

def _cli(args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(SystemExit) as info:
        run_cli(od.main, args)
    return info.value.code, err.getvalue()


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_full_disk_while_adding_the_sound_is_an_error_that_keeps_the_silent_video(tmp_path, make_checkpoint,
                                                                                   umask_022):
    # 1 s of video (a few kB) with 20 s of PCM sound (3.5 MB, copied into .mkv): the sound pass runs out of space
    src = make_clip(tmp_path / "in.mkv", seconds=1, fps=10, audio=True, audio_seconds=20, codec="pcm_s16le")
    model = make_checkpoint()
    with small_disk(tmp_path / "disk", "512k") as disk:
        out, js = str(disk / "out.mkv"), str(disk / "out.json")
        code, err = _cli([model, src, "-o", out, "--json", js, "--no-progress", "--device", "cpu"])
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, err
        assert lines[0].startswith(f"error: no space left on device while writing {out} — ")
        assert f"the video was kept without sound, and the detections in {js}" in lines[0]
        assert sorted(os.listdir(disk)) == ["out.json", "out.mkv"]  # no temporary file left behind
        assert count_frames(out) == 10 and audio_codec(out) is None
        assert len(json.load(open(js))["frames"]) == 10
        assert os.stat(out).st_mode & 0o777 == 0o644 and os.stat(js).st_mode & 0o777 == 0o644


def test_full_disk_while_encoding_leaves_nothing(tmp_path):
    src = make_clip(tmp_path / "in.mp4", seconds=1, fps=10, audio=True)
    with small_disk(tmp_path / "disk", "8k") as disk:
        frames = np.random.default_rng(0).integers(0, 255, (40, 96, 128, 3), dtype=np.uint8)  # noise: big
        with pytest.raises(UserError) as info:
            with VideoWriter(str(disk / "out.mp4"), 128, 96, 10, audio_from=src, crf=0) as writer:
                for frame in frames:
                    writer.write(frame)
        assert info.value.message.startswith(f"no space left on device while writing {disk / 'out.mp4'} — ")
        assert os.listdir(disk) == []


def test_outputs_get_the_umask_permissions(tmp_path, umask_022):
    src = make_clip(tmp_path / "in.mp4", seconds=0.4, fps=10, audio=True)
    out = str(tmp_path / "out.mp4")
    detect_video(NoDetections(), VideoReader(src), out, json_path=str(tmp_path / "o.json"), progress=False)
    assert os.stat(out).st_mode & 0o777 == 0o644 and os.stat(tmp_path / "o.json").st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------------------------
# 18.9 variable frame rate: resampled to the nominal rate, every JSON frame has its presentation time

def test_vfr_input_is_resampled_and_json_frames_carry_presentation_times(tmp_path):
    vfr = str(tmp_path / "vfr.mkv")  # 1 s at 10 fps then 1 s at 25 fps: 35 frames, nominal rate 25
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=1", "-f", "lavfi", "-i",
           "testsrc2=size=64x48:rate=25:duration=1", "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]",
           "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", vfr)
    assert count_frames(vfr) == 35
    out, js = str(tmp_path / "out.mp4"), str(tmp_path / "out.json")
    detect_video(NoDetections(), VideoReader(vfr), out, json_path=js, progress=False)
    assert count_frames(out) == 50  # 2 s at 25 fps, in sync with the input's clock
    frames = json.load(open(js))["frames"]
    assert [f["pts"] for f in frames] == pytest.approx([i / 25 for i in range(50)], abs=1e-4)


def test_json_pts_follow_the_input_clock_when_it_does_not_start_at_zero(tmp_path):
    src = make_clip(tmp_path / "late.mkv", seconds=1, fps=25, extra=("-output_ts_offset", "1.5"))
    js = str(tmp_path / "out.json")
    detect_video(NoDetections(), VideoReader(src), str(tmp_path / "out.mp4"), json_path=js, progress=False)
    frames = json.load(open(js))["frames"]
    assert len(frames) == 25
    assert [f["time"] for f in frames] == pytest.approx([i / 25 for i in range(25)], abs=1e-4)
    assert [f["pts"] for f in frames] == pytest.approx([1.5 + i / 25 for i in range(25)], abs=1e-4)
