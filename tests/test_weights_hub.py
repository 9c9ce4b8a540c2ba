"""Downloads of registry models (weights.hub) against an HTTP server on 127.0.0.1 that the test starts: progress,
checksum, cache reuse, refusals and the one-line offline error. TORCH_HOME is a temporary folder."""
import hashlib
import http.server
import os
import socket
import threading

import pytest
import torch

from utils.errors import UserError
from utils.loading.checkpoint import load_model
from weights import hub, registry
from weights.__main__ import main as weights_main
from weights.registry import Entry


class _Server:
    """Serves ``files`` (name -> bytes) and counts the requests per path."""

    def __init__(self, files):
        self.files, self.requests = files, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                body = owner.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(hub.BASE_URL_ENV, raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory, make_checkpoint):
    """A random-weight bare SSD state_dict (as ssd.pytorch publishes) as bytes."""
    with open(make_checkpoint(bare=True), "rb") as fh:
        return fh.read()


def _entry(monkeypatch, data, name="test-ssd", filename="test_ssd-0000.pth", sha256="auto", converter=None):
    digest = hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256
    entry = Entry(name, "detector", filename, "http://192.0.2.1/never-used/", digest, None, "test", "RGB", "random",
                  "-", converter, "1 MB", "test")
    monkeypatch.setitem(registry._BY_NAME, name, entry)
    return entry


def test_download_shows_progress_verifies_and_second_use_makes_no_request(torch_home, tiny_bytes, monkeypatch,
                                                                          capfd):
    entry = _entry(monkeypatch, tiny_bytes)
    server = _Server({entry.filename: tiny_bytes})
    try:
        monkeypatch.setenv(hub.BASE_URL_ENV, server.url)  # the mirror override replaces the publisher's URL
        path = hub.resolve_model_path("test-ssd")
        assert path == str(torch_home / entry.filename)
        with open(path, "rb") as fh:
            assert fh.read() == tiny_bytes
        assert "100%" in capfd.readouterr().err  # torch.hub's progress bar
        assert hub.resolve_model_path("test-ssd") == path
        assert server.requests == ["/" + entry.filename]
    finally:
        server.close()


def test_corrupt_download_is_refused_and_nothing_is_cached(torch_home, tiny_bytes, monkeypatch):
    entry = _entry(monkeypatch, tiny_bytes)
    corrupt = tiny_bytes[:-10] + b"0123456789"
    server = _Server({entry.filename: corrupt})
    try:
        with pytest.raises(UserError, match="checksum mismatch.*nothing was cached"):
            hub.fetch("test-ssd", base_url=server.url, progress=False)
    finally:
        server.close()
    assert not torch_home.exists() or os.listdir(torch_home) == []


def test_server_down_gives_one_line_naming_url_file_and_folder_and_exit_1(torch_home, tiny_bytes, monkeypatch,
                                                                         capsys):
    entry = _entry(monkeypatch, tiny_bytes)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(hub.BASE_URL_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.setattr(registry, "names", lambda kind=None: ["test-ssd"])
    with pytest.raises(SystemExit) as exc:
        from utils.errors import run_cli
        run_cli(weights_main, ["fetch", "test-ssd"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"http://127.0.0.1:{port}/{entry.filename}" in err and str(torch_home) in err
    assert "by hand" in err


def test_a_server_that_accepts_but_never_answers_is_abandoned_after_the_stall_timeout(torch_home, tiny_bytes,
                                                                                      monkeypatch):
    """torch.hub opens URLs without a timeout: a silent host must not hang the download forever."""
    import time

    entry = _entry(monkeypatch, tiny_bytes)
    monkeypatch.setattr(hub, "STALL_TIMEOUT_S", 0.5)
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never sends a byte
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        monkeypatch.setenv(hub.BASE_URL_ENV, f"http://127.0.0.1:{listener.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(UserError, match="cannot download .*timed out.* by hand"):
            hub.download(entry, progress=False)
        assert time.monotonic() - start < 10
    assert socket.getdefaulttimeout() is None  # the process-wide default is restored
    assert list(torch_home.iterdir()) == []  # no partial file left in the cache


def test_file_without_published_checksum_is_not_downloaded_unless_a_sha256_is_given(torch_home, tiny_bytes,
                                                                                     monkeypatch, capsys):
    entry = _entry(monkeypatch, tiny_bytes, sha256=None)
    server = _Server({entry.filename: tiny_bytes})
    try:
        with pytest.raises(UserError, match="no published checksum.*--sha256"):
            hub.fetch("test-ssd", base_url=server.url, progress=False)
        assert server.requests == []
        with pytest.raises(UserError, match="checksum mismatch"):
            hub.fetch("test-ssd", base_url=server.url, sha256="00" * 32, progress=False)
        monkeypatch.setattr(registry, "names", lambda kind=None: ["test-ssd"])
        assert weights_main(["fetch", "test-ssd", "--base-url", server.url,
                             "--sha256", hashlib.sha256(tiny_bytes).hexdigest()]) == 0
        path = capsys.readouterr().out.strip()
        assert path == str(torch_home / entry.filename) and os.path.getsize(path) == len(tiny_bytes)
    finally:
        server.close()


def test_converted_file_is_cached_beside_the_download_and_reused(torch_home, tiny_bytes, monkeypatch):
    entry = _entry(monkeypatch, tiny_bytes, converter=registry.CONVERT_BGR_TO_RGB)
    server = _Server({entry.filename: tiny_bytes})
    try:
        path = hub.fetch("test-ssd", base_url=server.url, progress=False)
        assert os.path.dirname(path) == str(torch_home) and path != str(torch_home / entry.filename)
        os.remove(torch_home / entry.filename)  # the converted file alone is enough now
        assert hub.fetch("test-ssd", base_url=server.url, progress=False) == path
        assert len(server.requests) == 1
    finally:
        server.close()
    # the Caffe (BGR) model, converted, gives on an RGB batch what the original gives on the BGR batch
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["config"]["conv1_input_flipped_from"] == "BGR" and "input_order" not in ckpt["config"]
    original, _ = load_model(make_checkpoint_path(tiny_bytes, torch_home.parent), "train")
    converted, _ = load_model(path, "train")
    rgb = torch.randn(1, 3, 300, 300) * 50
    with torch.no_grad():
        assert torch.allclose(converted.eval().forward_raw(rgb)[1], original.eval().forward_raw(rgb.flip(1))[1],
                              atol=1e-5)


def make_checkpoint_path(data, folder):
    path = folder / "original.pth"
    path.write_bytes(data)
    return str(path)


def test_local_path_wins_over_a_registry_name(tmp_path, monkeypatch, torch_home):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ssd300-coco").write_bytes(b"x")
    assert hub.resolve_model_path("ssd300-coco") == "ssd300-coco"
    assert hub.resolve_model_path("no/such/file.pth") == "no/such/file.pth"  # the loader words that error
    assert not torch_home.exists()


def test_a_base_network_name_is_refused_where_a_detector_is_expected(torch_home):
    with pytest.raises(UserError, match="vgg16-reducedfc is a basenet") as exc:
        hub.resolve_model_path("vgg16-reducedfc", kind="detector")
    assert exc.value.code == 2


def test_registry_lists_every_required_model_with_its_checksum_policy(capsys):
    assert weights_main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ssd300-coco", "ssd300-voc", "ssd300-voc-caffe", "vgg16-reducedfc", "vgg16-imagenet"):
        assert name in out
    coco = registry.get("ssd300-coco")
    assert coco.url == "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth"
    assert coco.checksum == "b556d3b4" and registry.get("vgg16-imagenet").checksum == "397923af"
    assert registry.get("ssd300-voc").checksum is None and "none published" in out
    assert registry.get("ssd300-voc-caffe").input_order == "BGR"


@pytest.mark.parametrize("module, argv, needle", [
    ("weights.__main__", ["fetch", "no-such-model"], "invalid choice: 'no-such-model'"),
    ("weights.__main__", ["list", "--bogus"], "unrecognized arguments: --bogus"),
    ("weights.__main__", [], "required: command"),
    ("weights.convert", ["model.pth"], "required: --classes, -o/--output"),
    ("weights.convert_vgg", [], "required: src"),
    ("weights.convert_torchvision", ["x.pth"], "required: -o/--output"),
])
def test_weights_clis_word_usage_errors_in_one_line_with_exit_2(module, argv, needle, capsys):
    import importlib

    from utils.errors import run_cli

    with pytest.raises(SystemExit) as exc:
        run_cli(importlib.import_module(module).main, argv)
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    command = module if module != "weights.__main__" else "weights" if argv[:1] != ["fetch"] else "weights fetch"
    assert len(lines) == 1 and needle in lines[0] and f"(see python -m {command} --help)" in lines[0], lines
