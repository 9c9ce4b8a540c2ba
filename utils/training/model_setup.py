"""The network a run trains: built from its :class:`~utils.loading.config.ModelConfig`, then given its starting
weights (a resumed checkpoint, a trained SSD to fine-tune, the ImageNet VGG-16 base network, or none), then partly
frozen (``--freeze``)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import List, Optional, Set

from ssd import SSD
from utils.errors import UserError
from utils.loading.checkpoint import check_finite, load_basenet, load_into, split_checkpoint
from utils.loading.config import ModelConfig
from utils.training.logs import info, note
from utils.training.optim import freeze_vgg
from utils.training.pretrained import PretrainedSource, load_pretrained_weights
from utils.training.resume import ResumeSource, check_resume_architecture
from weights import registry
from weights.hub import resolve_model_path


@dataclass
class Start:
    """Where the run starts: the first iteration, and whether pre-trained weights were loaded into a fresh run
    (ImageNet VGG, a trained SSD to fine-tune or a bare state_dict; that decides ``--freeze auto``)."""

    iteration: int = 0
    pretrained: bool = False


def build_model(config: ModelConfig, background_prior: float) -> SSD:
    """A train-phase SSD; ``background_prior`` > 0 starts the confidence heads at that P(background) (any
    checkpoint loaded afterwards overwrites these biases)."""
    model = config.build("train")
    if background_prior > 0:
        model.init_background_prior(background_prior)
    return model


def load_resumed_weights(model: SSD, config: ModelConfig, resume: ResumeSource, class_names: List[str],
                         s: argparse.Namespace, explicit: Set[str], main: bool) -> Start:
    """Load ``--resume``'s weights into ``model`` after checking that they fit; the iteration to start at."""
    path, ckpt = resume.path, resume.checkpoint
    state, meta = split_checkpoint(ckpt, path)
    check_finite(state, path)
    check_resume_architecture(ModelConfig.from_state(state, meta.get("config"), path), config, path)
    load_into(model, state, path)
    del state
    if resume.full:
        start = Start(int(ckpt.get("iteration", 0)), pretrained=False)
        names = ckpt.get("class_names")
        if names is not None and list(names) != class_names:
            raise UserError(f"checkpoint {path} was trained on classes {list(names)[:5]}... but the "
                            f"dataset has {class_names[:5]}... — resume with the same dataset")
        if "start_iter" in explicit and s.start_iter != start.iteration:
            note(f"--start_iter {s.start_iter} ignored: {path} continues at iteration {start.iteration}", main)
    else:
        start = Start(s.start_iter, pretrained=True)
    info(f"resumed from {path} at iteration {start.iteration}"
         f"{'' if resume.full else ' (weights only: a bare state_dict)'}", main)
    return start


def local_basenet(basenet: str, save_folder: str) -> Optional[str]:
    """``--basenet`` as a file: looked up in ``--save_folder``, then as a path; None if neither exists."""
    for cand in (os.path.join(save_folder, basenet), basenet):
        if os.path.isfile(cand):
            return cand
    return None


def basenet_path(basenet: str, save_folder: str) -> str:
    """``--basenet`` as a local file (:func:`local_basenet`: a file always wins), else a registry name of a base
    network (``vgg16-reducedfc``, ``vgg16-imagenet``: downloaded, verified and converted once into torch.hub's
    cache by :mod:`weights.hub`); a one-line error says how to make the file otherwise."""
    local = local_basenet(basenet, save_folder)
    if local is not None:
        return local
    if registry.is_name(basenet):
        return resolve_model_path(basenet, kind="basenet")
    raise UserError(
        f"base network not found: {os.path.join(save_folder, basenet)} — make it from torchvision's ImageNet "
        f"VGG-16 with `python -m weights.convert_vgg vgg16-397923af.pth -o "
        f"{os.path.join(save_folder, 'vgg16_reducedfc.pth')} --fold-input-norm` (see weights/README.md; or put "
        f"ssd.pytorch's vgg16_reducedfc.pth there), pass a name ({', '.join(registry.names('basenet'))}) to "
        "download one, or pass --basenet none to train from scratch")


def load_base_network(model: SSD, s: argparse.Namespace, main: bool) -> Start:
    """A fresh run: the ImageNet VGG-16 base network (the paper's model by default), or from scratch."""
    basenet = s.basenet
    paper_model = s.width == 1.0 and not s.batch_norm and s.stem == "vgg"
    if basenet is None:
        basenet = "vgg16_reducedfc.pth" if paper_model else "none"
    if str(basenet).lower() == "none":
        info("training from scratch (--basenet none)", main)
        return Start(s.start_iter, pretrained=False)
    local = local_basenet(basenet, s.save_folder)
    if not paper_model and (local is not None or registry.is_name(basenet)):  # (before a name is downloaded)
        extra = f"{' --batch_norm' if s.batch_norm else ''}{' --stem ' + s.stem if s.stem != 'vgg' else ''}"
        raise UserError(f"--basenet {local or basenet} holds the paper's VGG-16; it does not fit --width "
                        f"{s.width}{extra} — pass --basenet none to train from scratch")
    path = local or basenet_path(basenet, s.save_folder)
    load_basenet(model, path)
    info(f"loaded base network {path}", main)
    return Start(s.start_iter, pretrained=True)


def load_pretrained(model: SSD, source: PretrainedSource, class_names: List[str], s: argparse.Namespace,
                    main: bool) -> Start:
    """``--pretrained``: a new run from a trained SSD; says which classes were transferred."""
    report = load_pretrained_weights(model, source, class_names)
    info(f"fine-tuning from {source.describe()}; {report.summary()}", main)
    if not report.transferred:
        note("no class of the dataset matches one of the pretrained model's: every class head row but the "
             "background starts from scratch (the other layers are the pretrained ones)", main)
    return Start(s.start_iter, pretrained=True)


def load_start_weights(model: SSD, config: ModelConfig, resume: Optional[ResumeSource], class_names: List[str],
                       s: argparse.Namespace, explicit: Set[str], main: bool,
                       pretrained: Optional[PretrainedSource] = None) -> Start:
    """Starting weights from ``--resume``, ``--pretrained`` or ``--basenet``; refuses a start at or past
    ``--max_iter``."""
    if resume is not None:
        start = load_resumed_weights(model, config, resume, class_names, s, explicit, main)
    elif pretrained is not None:
        start = load_pretrained(model, pretrained, class_names, s, main)
    else:
        start = load_base_network(model, s, main)
    if start.iteration >= s.max_iter:
        raise UserError(f"nothing to train: the run starts at iteration {start.iteration} and --max_iter is "
                        f"{s.max_iter} — raise --max_iter to continue", code=2)
    return start


def apply_freeze(model: SSD, s: argparse.Namespace, pretrained: bool, main: bool) -> None:
    """``--freeze`` (``auto``: conv2 on pre-trained weights, none from scratch; decided here and stored in ``s``)."""
    if s.freeze == "auto":
        s.freeze = "conv2" if pretrained else "none"
    frozen = freeze_vgg(model, s.freeze)
    if frozen:
        info(f"frozen: VGG up to {s.freeze}_{2 if s.freeze != 'conv3' else 3} ({frozen / 1e6:.2f} M parameters; "
             "--freeze none trains them)", main)
