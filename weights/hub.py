"""Download, verify, convert and cache the registry's models with torch.hub's machinery.

* Files go to torch.hub's cache, ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, default
  ``~/.cache/torch/hub/checkpoints``) — where torchvision keeps the same files, so nothing is downloaded twice.
* ``torch.hub.download_url_to_file`` does the transfer (its progress bar on stderr; a ``.partial`` file renamed only
  when complete) and checks the SHA-256 (the full digest if published, else the 8-digit prefix in torchvision's file
  names) before the file is renamed into place: a mismatch leaves nothing in the cache.
* Converted files are written atomically beside the download (``<file stem>.<converter>-v<N>.pth``); a second use
  finds them and makes no network request.
* Offline / unreachable / a server silent for :data:`STALL_TIMEOUT_S` seconds: one UserError line naming the URL,
  the file and the folder to put it in by hand.
* ``SSD_WEIGHTS_BASE_URL`` (or ``base_url=``) replaces every entry's publisher URL with one mirror holding the files
  under their published names.
* Files without a published checksum (ssd.pytorch's) are only downloaded against a SHA-256 the caller supplies
  (``sha256=``, ``python -m weights fetch NAME --sha256 HEX``); a file the user put in the cache folder by hand is
  used as is (that is the air-gapped route, and the user's decision).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import urllib.error
from typing import Callable, Dict, Iterator, Optional

import torch

from utils.errors import UserError
from utils.loading.checkpoint import read_checkpoint, save_checkpoint, split_checkpoint
from utils.loading.names import default_class_names
from utils.loading.config import ModelConfig
from weights import registry, torchvision_ssd, vgg_base
from weights.registry import Entry

BASE_URL_ENV = "SSD_WEIGHTS_BASE_URL"
CONVERTER_VERSION = 1
# seconds without a byte from the server before a download is abandoned: torch.hub opens the URL without a
# timeout, and a host that silently drops packets would otherwise hang until the OS gives up (minutes)
STALL_TIMEOUT_S = 60.0


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Sockets opened inside (by urllib, without a timeout of their own) give up after ``seconds`` of silence."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def cache_dir() -> str:
    """``torch.hub.get_dir()/checkpoints`` (honours ``$TORCH_HOME``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def source_url(entry: Entry, base_url: Optional[str] = None) -> str:
    """The URL to fetch ``entry`` from: ``base_url`` or ``$SSD_WEIGHTS_BASE_URL`` (a mirror) else the publisher's."""
    base = base_url or os.environ.get(BASE_URL_ENV) or entry.base_url
    return base.rstrip("/") + "/" + entry.filename


def download(entry: Entry, base_url: Optional[str] = None, sha256: Optional[str] = None,
             progress: bool = True) -> str:
    """The path of ``entry``'s published file in the cache, downloading and verifying it if absent."""
    folder = cache_dir()
    path = os.path.join(folder, entry.filename)
    if os.path.isfile(path):
        return path
    url = source_url(entry, base_url)
    expected = (sha256 or entry.checksum or "").lower() or None
    if expected is None:
        raise UserError(f"{entry.name}: {entry.filename} has no published checksum, so it is not downloaded "
                        f"unverified — check a copy from {url} yourself and pass its SHA-256 "
                        f"(python -m weights fetch {entry.name} --sha256 HEX), or put the file in {folder}")
    os.makedirs(folder, exist_ok=True)
    try:
        with socket_timeout(STALL_TIMEOUT_S):
            torch.hub.download_url_to_file(url, path, hash_prefix=expected, progress=progress)
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise
        raise UserError(f"checksum mismatch for {url}: {exc} — the file was refused and nothing was cached; "
                        f"try again later or put a verified {entry.filename} in {folder}") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"cannot download {url} ({reason}) — on a machine without internet access, copy "
                        f"{entry.filename} into {folder} by hand") from None
    except OSError as exc:  # the network part worked: writing the file did not
        raise UserError(f"cannot save {entry.filename} into {folder} ({exc.strerror or exc}) — free some space or "
                        "set TORCH_HOME to a writable folder") from None
    return path


def _check_hash(path: str, expected: Optional[str]) -> None:
    if not expected:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(expected.lower()):
        raise UserError(f"checksum mismatch: {path} has SHA-256 {digest.hexdigest()}, expected {expected}… — "
                        "delete it and download it again")


def converted_path(entry: Entry) -> str:
    stem = os.path.splitext(entry.filename)[0]
    return os.path.join(cache_dir(), f"{stem}.{entry.converter}-v{CONVERTER_VERSION}.pth")


def _convert_torchvision(src: str, dst: str) -> None:
    torchvision_ssd.convert_file(src, dst)


def _convert_vgg(src: str, dst: str) -> None:
    vgg_base.convert_file(src, dst, fold_input_norm=True)


def _bgr_to_rgb(src: str, dst: str) -> None:
    """ssd.pytorch's Caffe-converted VOC model, made to take this project's RGB input: conv1_1's input channels
    are reversed, so ``conv(rgb, flipped) == conv(bgr, original)`` exactly (zero padding is zero in both orders,
    and the per-colour means are subtracted before the network either way). Works unchanged for every backend
    (PyTorch, ONNX, TorchScript); the checkpoint records what was done."""
    state, _ = split_checkpoint(read_checkpoint(src), src)
    config = ModelConfig.from_state(state, None, src).to_dict()
    state = dict(state)
    state["vgg.0.weight"] = state["vgg.0.weight"].flip(1).contiguous()
    config.update({"conv1_input_flipped_from": "BGR",
                   "source": "ssd.pytorch ssd_300_VOC0712.pth (Caffe SSD trained on BGR; conv1_1 channels reversed)"})
    save_checkpoint({"model": state, "class_names": default_class_names(config["num_classes"]), "config": config}, dst)


CONVERTERS: Dict[str, Callable[[str, str], None]] = {
    registry.CONVERT_TORCHVISION_SSD: _convert_torchvision,
    registry.CONVERT_VGG_FOLD: _convert_vgg,
    registry.CONVERT_BGR_TO_RGB: _bgr_to_rgb,
}


def fetch(name: str, base_url: Optional[str] = None, sha256: Optional[str] = None, progress: bool = True) -> str:
    """The local path of the registry model ``name``, ready to load: downloaded, verified, converted, cached."""
    entry = registry.get(name)
    if entry.converter is not None and os.path.isfile(converted_path(entry)):
        return converted_path(entry)
    path = download(entry, base_url, sha256, progress)
    if entry.converter is None:
        return path
    _check_hash(path, sha256 or entry.checksum)  # a file put there by hand is checked once, before converting
    CONVERTERS[entry.converter](path, converted_path(entry))
    return converted_path(entry)


def resolve_model_path(name_or_path: str, kind: Optional[str] = "detector", base_url: Optional[str] = None,
                       progress: bool = True) -> str:
    """What the CLIs call on a model argument: an existing path is returned as is (a local file always wins);
    a registry name is fetched (see :func:`fetch`); anything else is returned unchanged, so the loader reports it.

    ``kind`` (``"detector"``, ``"basenet"`` or None for either) refuses a name of the other kind (exit 2).
    """
    if os.path.exists(name_or_path) or not registry.is_name(name_or_path):
        return name_or_path
    entry = registry.get(name_or_path)
    if kind is not None and entry.kind != kind:
        raise UserError(f"{entry.name} is a {entry.kind}, not a {kind} — choose one of "
                        f"{', '.join(registry.names(kind))}", code=2)
    return fetch(entry.name, base_url=base_url, progress=progress)
