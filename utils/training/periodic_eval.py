"""``--eval_every``: mAP of the current weights on a held-out split, through eval.py's code, logged to
``ssd{size}_{dataset}_eval.csv`` (and TensorBoard)."""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from utils.errors import UserError
from utils.inference.predictor import Predictor
from utils.loading.config import ModelConfig
from utils.metrics.evaluation import evaluate_model
from utils.training.logs import TrainLog

# the held-out split of each dataset when --eval_split is not given: (split, VOC year)
DEFAULT_EVAL_SPLITS = {"VOC": ("test", "2007"), "COCO": ("minival2014", None), "custom": ("val", None)}


def build_eval_dataset(s: argparse.Namespace, build_dataset: Callable[..., Any]):
    """The ``--eval_split`` dataset (difficult objects kept: the metric ignores them, as the devkit does)."""
    split, year = s.eval_split, None
    if split is None:
        split, year = DEFAULT_EVAL_SPLITS[s.dataset]
    elif s.dataset == "VOC" and " " in split:
        year, split = split.split(None, 1)
    ds = build_dataset(s.dataset, s.dataset_root, split, None, keep_difficult=True, year=year)
    if len(ds) == 0:
        raise UserError(f"--eval_split {split} of {s.dataset_root} is empty — list image ids in its split file")
    return ds


def eval_log_fields(class_names: List[str]) -> List[str]:
    return ["iteration", "mAP"] + [f"AP_{c}" for c in class_names]


def inference_copy(model: nn.Module) -> nn.Module:
    """A test-phase SSD of the same configuration (stem, BatchNorm, width, priors) holding ``model``'s weights."""
    test_model = ModelConfig.from_model(model).build("test")
    test_model.load_state_dict(model.state_dict())
    return test_model


def evaluate(s: argparse.Namespace, model: nn.Module, class_names: List[str], device: torch.device, amp: bool,
             dataset: Any, log: TrainLog, iteration: int) -> Dict[str, Any]:
    """Score the current weights on ``dataset``; log and print the row (``iteration``, ``mAP``, ``AP_<class>``)."""
    predictor = Predictor(inference_copy(model), class_names, s.size, device, amp, channels_last=s.channels_last)
    t0 = time.perf_counter()
    result = evaluate_model(predictor, dataset, s.eval_batch_size, s.num_workers, metric=s.eval_metric,
                            set_name=str(getattr(dataset, "split", "val")))
    row: Dict[str, Any] = {"iteration": iteration, "mAP": float(result["mAP"])}
    for name, ap in (result.get("ap") or {}).items():
        row[f"AP_{name}"] = float(ap)
    log.log(row, tb_prefix="eval")
    print(f"eval at iteration {iteration}: {result.get('metric', s.eval_metric)} mAP {row['mAP']:.4f} "
          f"on {len(dataset)} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    return row
