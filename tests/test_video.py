"""utils/media (ffmpeg, video_reader, video_writer, images, pipeline): probing, streaming decode, atomic encode
with audio copy, bad inputs, the pipeline."""
from __future__ import annotations

import os
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from utils.errors import UserError
from utils.media.ffmpeg import probe_video
from utils.media.images import list_images, read_image, write_image
from utils.media.pipeline import run_pipeline
from utils.media.video_reader import VideoReader
from utils.media.video_writer import VideoWriter, crf_from_quality

from tests.video_helpers import audio_codec, decode_all, ffmpeg, make_video, ramp_frames, truncated_video


# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("w,h", [(64, 48), (65, 49)])
def test_reader_yields_every_frame_in_order_with_size_and_fps(tmp_path, w, h):
    path = make_video(tmp_path / "in.mp4", ramp_frames(24, h, w))
    reader = VideoReader(path)
    assert (reader.info.width, reader.info.height, reader.info.fps, reader.info.n_frames) == (w, h, 24, 24)
    frames = list(reader)
    assert len(frames) == 24
    assert frames[0].shape == (h, w, 3) and frames[0].dtype == np.uint8 and frames[0].flags.writeable
    levels = [int(round(float(f.mean()))) for f in frames]
    assert all(abs(l - (20 + 8 * i)) <= 2 for i, l in enumerate(levels))


def test_probe_recovers_exact_ntsc_rate_and_audio(tmp_path):
    path = make_video(tmp_path / "ntsc.mp4", ramp_frames(6, 48, 64), fps="30000/1001", audio="aac")
    info = probe_video(path)
    assert info.fps == Fraction(30000, 1001)
    assert info.has_audio


def test_reader_swaps_size_for_rotated_video(tmp_path):
    src = make_video(tmp_path / "src.mp4", ramp_frames(3, 48, 64))
    rotated = str(tmp_path / "rot.mp4")
    ffmpeg("-display_rotation", "90", "-i", src, "-c", "copy", rotated)
    reader = VideoReader(rotated)
    assert (reader.info.width, reader.info.height) == (48, 64)
    assert next(iter(reader)).shape == (64, 48, 3)


def test_reader_max_frames_stops_early(tmp_path):
    path = make_video(tmp_path / "in.mp4", ramp_frames(24, 48, 64))
    assert len(list(VideoReader(path, max_frames=5))) == 5


def test_peek_decodes_the_first_frame_and_iteration_still_starts_there(tmp_path):
    reader = VideoReader(make_video(tmp_path / "in.mp4", ramp_frames(6, 48, 64)))
    first = reader.peek()
    assert reader.peek() is first
    frames = list(reader)
    assert len(frames) == 6 and frames[0] is first and abs(float(frames[1].mean()) - 28) < 2


@pytest.mark.parametrize("w,h", [(64, 48), (65, 49), (33, 17)])
def test_writer_keeps_exact_size_fps_and_count(tmp_path, w, h):
    out = str(tmp_path / "sub" / "out.mp4")  # folder created on the way
    with VideoWriter(out, w, h, Fraction(30000, 1001), crf=0) as writer:
        for frame in ramp_frames(10, h, w):
            writer.write(frame)
    info = probe_video(out)
    assert (info.width, info.height, info.fps) == (w, h, Fraction(30000, 1001))
    frames = decode_all(out)
    assert frames.shape == (10, h, w, 3)
    assert np.abs(frames.mean(axis=(1, 2, 3)) - (20 + 8 * np.arange(10))).max() < 2
    assert os.listdir(tmp_path / "sub") == ["out.mp4"]  # no temporaries left


def test_writer_copies_audio_stream_without_reencoding(tmp_path):
    src = make_video(tmp_path / "in.mp4", ramp_frames(24, 48, 64), audio="libmp3lame")
    assert audio_codec(src) == "mp3"
    out = str(tmp_path / "out.mp4")
    with VideoWriter(out, 64, 48, 24, audio_from=src) as writer:
        for frame in ramp_frames(24, 48, 64):
            writer.write(frame)
    assert audio_codec(out) == "mp3"  # a re-encode would have produced AAC
    assert len(decode_all(out)) == 24
    assert writer.notes == []
    assert sorted(os.listdir(tmp_path)) == ["in.mp4", "out.mp4"]


def test_writer_abort_leaves_no_file_and_keeps_existing_one(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with VideoWriter(str(out), 64, 48, 24, audio_from=None) as writer:
            writer.write(np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("interrupted")
    assert out.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_writer_rejects_unsupported_extension_and_crf(tmp_path):
    with pytest.raises(UserError, match="unsupported extension"):
        VideoWriter(str(tmp_path / "out.webm"), 64, 48, 24)
    with pytest.raises(UserError, match="crf"):
        VideoWriter(str(tmp_path / "out.mp4"), 64, 48, 24, crf=60)
    assert os.listdir(tmp_path) == []


def test_quality_maps_to_crf():
    assert crf_from_quality(10) == 0 and crf_from_quality(0) == 51 and crf_from_quality(5) == 26
    with pytest.raises(UserError):
        crf_from_quality(11)


# --------------------------------------------------------------------------------------------
# bad inputs: each raises a UserError naming the file

def test_bad_inputs_raise_one_clear_error_naming_the_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    audio_only = str(tmp_path / "audio.m4a")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440", "-t", "0.3", audio_only)
    no_stream = str(tmp_path / "nostream.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=24", "-frames:v", "0", "-c:v", "libx264", no_stream)
    zero_frames = str(tmp_path / "zero.avi")  # a video stream that holds no frame
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=24", "-frames:v", "0", "-c:v", "libx264", zero_frames)
    cases = {
        str(tmp_path / "missing.mp4"): "not found",
        str(tmp_path / "empty.mp4"): "empty",
        str(tmp_path / "notes.mp4"): "not a video",
        truncated_video(tmp_path, faststart=False): "truncated",
        truncated_video(tmp_path, faststart=True): "truncated",
        audio_only: "no video",
        no_stream: "no video",
        zero_frames: "zero frames",
    }
    for path, expected in cases.items():
        with pytest.raises(UserError) as info:
            for _ in VideoReader(path):
                pass
        message = str(info.value)
        assert expected in message and path in message, (path, message)
        assert "\n" not in message


def test_truncated_video_stops_after_the_frames_it_could_decode(tmp_path):
    reader = VideoReader(truncated_video(tmp_path, faststart=True))
    got = []
    with pytest.raises(UserError, match=r"after \d+ of ~24 frames"):
        for frame in reader:
            got.append(frame)
    assert 0 < len(got) < 24


def test_images_and_folders(tmp_path):
    img = np.zeros((30, 41, 3), np.uint8)
    img[:, :, 0] = 200  # red in RGB
    write_image(str(tmp_path / "b.png"), img)
    write_image(str(tmp_path / "a.jpg"), img)
    (tmp_path / "notes.txt").write_text("x")
    assert [os.path.basename(p) for p in list_images(str(tmp_path))] == ["a.jpg", "b.png"]
    back = read_image(str(tmp_path / "b.png"))
    assert back.shape == (30, 41, 3) and back[0, 0, 0] == 200 and back[0, 0, 2] == 0  # RGB order kept
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(UserError, match="broken.jpg"):
        read_image(str(tmp_path / "broken.jpg"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images"):
        list_images(str(empty))


# --------------------------------------------------------------------------------------------
# the threaded pipeline

def test_pipeline_keeps_order_batches_and_bounded_memory():
    in_flight = [0]
    peak = [0]
    lock = threading.Lock()
    produced = []

    def source():
        for i in range(200):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            produced.append(i)
            yield i

    batches = []

    def infer(batch):
        batches.append(len(batch))
        time.sleep(0.001 * (len(batches) % 3))  # uneven stage timings
        return [x * 10 for x in batch]

    seen = []

    def consume(frame, result):
        assert result == frame * 10
        seen.append(frame)
        with lock:
            in_flight[0] -= 1

    n = run_pipeline(source(), infer, consume, batch_size=8, depth=2)
    assert n == 200 and seen == list(range(200))
    assert batches[:-1] == [8] * (len(batches) - 1) and sum(batches) == 200
    assert peak[0] <= (2 * 2 + 3) * 8  # bounded however long the source


@pytest.mark.parametrize("stage", ["source", "infer", "consume"])
def test_pipeline_propagates_a_failure_from_any_stage_and_stops(stage):
    closed = threading.Event()

    def source():
        try:
            for i in range(10_000):
                if stage == "source" and i == 50:
                    raise UserError("bad frame")
                yield i
        finally:
            closed.set()

    def infer(batch):
        if stage == "infer" and batch[0] >= 40:
            raise UserError("bad frame")
        return batch

    def consume(frame, result):
        if stage == "consume" and frame == 30:
            raise UserError("bad frame")

    before = threading.active_count()
    with pytest.raises(UserError, match="bad frame"):
        run_pipeline(source(), infer, consume, batch_size=4)
    assert closed.wait(5)  # the source was closed (ffmpeg would be stopped)
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
