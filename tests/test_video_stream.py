"""Issue 18.6: live streams as INPUT (read by ffmpeg through the same pipeline), ended by --max_frames,
--max_seconds or Ctrl-C with the output kept and playable. The stream is served by the bundled ffmpeg on
127.0.0.1 (MPEG-TS over UDP), never from outside."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.video_helpers import NoDetections, count_frames
from utils.errors import UserError
from utils.media.detect import detect_video
from utils.media.ffmpeg import ffmpeg_exe, is_stream_url
from utils.media.video_reader import VideoReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def live_stream():
    """A live 64x48 25 fps H.264 stream on udp://127.0.0.1:PORT (keyframe every 5 frames), for at most 60 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"udp://127.0.0.1:{port}"
    server = subprocess.Popen([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-re", "-f", "lavfi",
                               "-i", "testsrc2=size=64x48:rate=25", "-t", "60", "-c:v", "libx264",
                               "-preset", "ultrafast", "-tune", "zerolatency", "-g", "5", "-f", "mpegts",
                               f"{url}?pkt_size=1316"])
    yield url
    server.kill()
    server.wait()


def test_stream_urls_are_recognised():
    assert all(is_stream_url(u) for u in ("rtsp://cam/1", "RTMP://h/app", "http://h/x.ts", "https://h/a.m3u8",
                                          "udp://127.0.0.1:5000"))
    assert not any(is_stream_url(u) for u in ("video.mp4", "/data/udp.mp4", "C:\\clips\\a.mp4", "file://x.mp4"))


def test_a_stream_that_is_not_there_fails_with_one_line():
    with pytest.raises(UserError) as info:
        VideoReader("tcp://127.0.0.1:9")  # the discard port: nothing listens
    assert info.value.message.startswith("cannot open the stream tcp://127.0.0.1:9")


def test_live_stream_ends_at_max_frames_and_max_seconds_with_playable_output(tmp_path, live_stream):
    out = str(tmp_path / "frames.mp4")
    summary = detect_video(NoDetections(), VideoReader(live_stream, max_frames=12), out, progress=False)
    assert summary.frames == 12 and count_frames(out) == 12
    out = str(tmp_path / "seconds.mkv")
    summary = detect_video(NoDetections(), VideoReader(live_stream, max_seconds=0.8), out, progress=False)
    # 0.8 s of the stream's clock: 20 frames at 25 fps, fewer when joined between keyframes (undecodable start)
    assert 15 <= summary.frames <= 20 and count_frames(out) == summary.frames


def test_ctrl_c_ends_a_live_stream_and_keeps_what_was_written(tmp_path, live_stream, make_checkpoint):
    out, js = tmp_path / "live.mp4", tmp_path / "live.json"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "object_detection.py"), make_checkpoint(),
                             live_stream, "-o", str(out), "--json", str(js), "--device", "cpu", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    # the encoder's temporary file appears once the stream is open and frames flow
    while time.time() < deadline and proc.poll() is None and not any(
            n.startswith(".live.mp4.") and os.path.getsize(tmp_path / n) > 0 for n in os.listdir(tmp_path)):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    frames = json.load(open(js))["frames"]
    assert len(frames) > 0 and f"frames: {len(frames)} " in stdout
    assert count_frames(out) == len(frames)
    assert sorted(os.listdir(tmp_path)) == ["live.json", "live.mp4"]
