"""The training run: setup → loop of (step → bookkeeping) → finish.

* setup: data (training split, ``--eval_every`` split), the model (:class:`ModelConfig` → starting weights →
  freeze → device / DDP), optimiser + schedule (+ the resumed state), the endless sampler, checkpoints and logs;
* :meth:`Trainer.step`: forward, MultiBox loss sums reduced over ranks, backward and update — or, for a
  non-finite loss, a skipped step with BatchNorm statistics rolled back;
* :meth:`Trainer.bookkeeping`: loss window and log row, non-finite guard, periodic checkpoint, periodic mAP;
* :meth:`Trainer.finish`: the final (or, on SIGINT / SIGTERM, the stop) checkpoint and the closing message.
The loop stops at ``--max_iter``, on a signal, or when ``--time_budget`` is used (one decision for all ranks).
With ``--max_iter auto`` the first iterations are timed, then ``max_iter`` and the LR schedule are set to fill
``--time_budget`` (:mod:`utils.training.budget`).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Set, Tuple

import torch
import torch.utils.data as tud

from data import build_dataset, detection_collate, unwrap_worker_error
from data.config import MEANS
from data.transforms import SSDAugmentation
from utils.device import amp_dtype, autocast
from utils.errors import UserError
from utils.loading.config import ModelConfig
from utils.training.budget import (MEASURE_ITERATIONS, SKIP_ITERATIONS, ThroughputMeter, fit_max_iter, fit_record,
                                   scale_steps, share_from_main)
from utils.training.checkpoints import CheckpointWriter, remove_stale_temp_files
from utils.training.distributed import DistInfo, all_reduce_sum, barrier, wrap_model
from utils.training.guards import BatchNormRollback, NonFiniteGuard, StopRequest
from utils.training.hooks import TestHooks
from utils.training.logs import CSV_FIELDS, LossWindow, TrainLog, info, log_line, note, progress_bar
from utils.training.loss import build_criterion, multibox_loss_sums
from utils.training.model_setup import apply_freeze, build_model, load_start_weights
from utils.training.optim import build_optimizer
from utils.training.periodic_eval import build_eval_dataset, eval_log_fields, evaluate
from utils.training.pretrained import PretrainedSource
from utils.training.resume import ResumeSource, restore_training_state
from utils.training.rng import restore_rng_state, seed_everything
from utils.training.sampler import EndlessBatchSampler, SeededDataset
from utils.training.schedule import (LRSchedule, apply_hyperparameters, build_scheduler, scheduler_step,
                                     set_schedule_length, set_scheduler_iteration)
from utils.training.settings import model_config, prior_config_name, run_config


def train(s: argparse.Namespace, explicit: Set[str], device: torch.device, dist: DistInfo,
          resume: Optional[ResumeSource], hooks: TestHooks = TestHooks(),
          pretrained: Optional[PretrainedSource] = None) -> int:
    """Train with the resolved settings ``s`` (train.py's flags); returns the exit status (0). ``pretrained``:
    ``--pretrained``'s model to fine-tune (``s`` already has its architecture: :func:`resolve_settings`)."""
    return Trainer(s, explicit, device, dist, resume, hooks, pretrained).run()


@dataclass
class StepResult:
    loss_l: float   # localisation loss of the global batch (sum over ranks / global positives)
    loss_c: float   # confidence loss, likewise
    finite: bool    # False: the step was skipped (weights and BatchNorm statistics unchanged)
    lr: float       # the learning rate this step trained with
    stop: bool      # a signal or the time budget: every rank stops after this step


class Trainer:
    """One training run; see the module docstring for its phases."""

    def __init__(self, s: argparse.Namespace, explicit: Set[str], device: torch.device, dist: DistInfo,
                 resume: Optional[ResumeSource], hooks: TestHooks,
                 pretrained: Optional[PretrainedSource] = None) -> None:
        self.s, self.device, self.dist, self.hooks = s, device, dist, hooks
        self.main = dist.is_main
        note_ignored_flags(s, device, dist)
        seed_everything(s.seed)
        self._setup_data()
        self._setup_model(resume, explicit, pretrained)
        self._setup_optimisation(resume)
        if resume is not None:
            resume.checkpoint = None  # do not keep a second copy of the weights alive while training
        self._setup_loader()
        self._setup_bookkeeping(resumed=resume is not None)

    # ---- setup ------------------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        s = self.s
        transform = SSDAugmentation(s.size, MEANS, mode=s.augment)
        self.dataset = build_dataset(s.dataset, s.dataset_root, s.train_split, transform,
                                     keep_difficult=s.keep_difficult, year=s.year)
        if len(self.dataset) == 0:
            raise UserError(f"the training split of {s.dataset_root} is empty — list image ids in its split file")
        self.class_names: List[str] = list(self.dataset.class_names)
        self.eval_dataset = build_eval_dataset(s, build_dataset) if s.eval_every and self.main else None

    def _setup_model(self, resume: Optional[ResumeSource], explicit: Set[str],
                     pretrained: Optional[PretrainedSource]) -> None:
        s, device = self.s, self.device
        config = model_config(s, len(self.class_names) + 1)
        self.model = build_model(config, s.background_prior)
        start = load_start_weights(self.model, config, resume, self.class_names, s, explicit, self.main, pretrained)
        self.start_iter = start.iteration
        apply_freeze(self.model, s, start.pretrained, self.main)
        self.model.to(device)
        if s.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = wrap_model(self.model, self.dist, device, s.sync_bn and device.type == "cuda" and s.batch_norm)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _setup_optimisation(self, resume: Optional[ResumeSource]) -> None:
        s, device = self.s, self.device
        self.optimizer = build_optimizer(self.model, s.optimizer, s.lr, s.momentum, s.weight_decay)
        schedule = LRSchedule.from_settings(s)
        self.scheduler = build_scheduler(self.optimizer, schedule)
        self.use_amp = bool(s.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp and amp_dtype(device) == torch.float16)
        if resume is not None and resume.full:
            restore_training_state(resume.checkpoint, self.optimizer, self.scheduler, self.scaler, resume.path)
            apply_hyperparameters(s, self.optimizer, self.scheduler, schedule)
            restore_rng_state(resume.checkpoint.get("rng") or {})
        else:
            set_scheduler_iteration(self.scheduler, self.start_iter)
        self.criterion = build_criterion(len(self.class_names) + 1, prior_config_name(s), s.size, device)

    def _setup_loader(self) -> None:
        """Data order: endless, sharded, resumable by position (no sampler state in the checkpoint)."""
        s, dist = self.s, self.dist
        sampler = EndlessBatchSampler(len(self.dataset), s.batch_size, s.seed, dist.rank, dist.world_size,
                                      self.start_iter)
        self.loader = tud.DataLoader(SeededDataset(self.dataset), batch_sampler=sampler, num_workers=s.num_workers,
                                     collate_fn=detection_collate, pin_memory=self.device.type == "cuda",
                                     persistent_workers=False)

    def _setup_bookkeeping(self, resumed: bool) -> None:
        s = self.s
        self.model_config = ModelConfig.from_model(self.model)
        config = run_config(s, self.model_config, self.dist.world_size)
        self.checkpoints = CheckpointWriter(s.save_folder, s.size, s.dataset, config, self.class_names,
                                            self.hooks.save_delay)
        self.meter = ThroughputMeter(self.start_iter) if s.max_iter_auto else None
        self.log: Optional[TrainLog] = None
        self.eval_log: Optional[TrainLog] = None
        if self.main:
            self._open_logs(resume_at=self.start_iter if resumed else None)
            announce_run(s, self.model, self.device, self.dist, len(self.class_names) + 1, len(self.dataset),
                         self.use_amp, self.start_iter)
        self.guard = NonFiniteGuard(s.max_nonfinite)
        self.window = LossWindow()
        self.bn = BatchNormRollback(self.model)
        self.bar = progress_bar(self.main, self.start_iter, None if s.max_iter_auto else s.max_iter)

    def _open_logs(self, resume_at: Optional[int]) -> None:
        s = self.s
        run = f"ssd{s.size}_{s.dataset}"
        os.makedirs(s.save_folder, exist_ok=True)
        for stale in remove_stale_temp_files(s.save_folder, s.size, s.dataset):
            note(f"removed {stale} (left by a run killed while saving)")
        tb_dir = os.path.join(s.save_folder, "tb") if s.tensorboard else None
        self.log = TrainLog(os.path.join(s.save_folder, f"{run}_log.csv"), CSV_FIELDS, tb_dir, resume_at=resume_at)
        if self.eval_dataset is not None:
            self.eval_log = TrainLog(os.path.join(s.save_folder, f"{run}_eval.csv"),
                                     eval_log_fields(self.class_names), None, resume_at=resume_at)

    # ---- the loop ---------------------------------------------------------------------------------------

    def run(self) -> int:
        s = self.s
        self.t_start = time.perf_counter()
        exit_message = ""
        iteration = self.start_iter
        data_iter = iter(self.loader)
        self.net.train()
        try:
            with StopRequest() as stop:
                while iteration < s.max_iter:  # (--max_iter auto sets s.max_iter once it has chosen it)
                    batch = self._next_batch(data_iter, stop)
                    if batch is None:  # Ctrl-C also reached the workers: stop without this batch
                        exit_message = f"{stop.name} received"
                        break
                    result = self.step(iteration, *batch, stop)
                    iteration += 1
                    if self.meter is not None:
                        self._fit_to_budget(iteration)
                    self.bookkeeping(iteration, result)
                    if result.stop:
                        exit_message = self._stop_reason(stop)
                        break
            self.finish(iteration, exit_message)
        finally:
            self._close()
            del data_iter
        return 0

    def _next_batch(self, data_iter: Iterator, stop: StopRequest) -> Optional[Tuple[Any, Any]]:
        try:
            return next(data_iter)
        except UserError as exc:  # a bad image/annotation, possibly re-raised from a worker
            raise (unwrap_worker_error(exc) or exc) from None
        except RuntimeError:
            if stop.requested:
                return None
            raise

    def step(self, it: int, images: torch.Tensor, targets: List[torch.Tensor], stop: StopRequest) -> StepResult:
        """Iteration ``it`` (0-based) on ``images [B, 3, S, S]`` and ``targets`` (``[n_i, 5]``: corners in
        [0, 1], label): forward, loss sums over all ranks, then update — or skip the step if non-finite."""
        s, device = self.s, self.device
        lr_used = self.optimizer.param_groups[0]["lr"]
        images = images.to(device, non_blocking=True)
        if s.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [t.to(device, non_blocking=True) for t in targets]
        self.bn.snapshot()
        with autocast(device, self.use_amp):
            loc, conf, priors = self.net(images)
        loss_l_sum, loss_c_sum, num_pos = multibox_loss_sums(self.criterion, loc, conf, priors, targets)
        if it + 1 in self.hooks.nan_at:
            loss_l_sum = loss_l_sum * float("nan")
        stopping = stop.requested or (self.main and self._budget_used())
        # global positives for the normalisation; one decision to stop for all ranks
        stats = all_reduce_sum(torch.stack([loss_l_sum.detach(), loss_c_sum.detach(), num_pos,
                                            torch.tensor(float(stopping), device=device)]), self.dist)
        n_global = stats[2].clamp(min=1.0)
        loss_l, loss_c = float(stats[0] / n_global), float(stats[1] / n_global)
        finite = math.isfinite(loss_l + loss_c)
        if finite:
            finite = self._update(loss_l_sum + loss_c_sum, n_global)
        if not finite:
            self.bn.restore()
        self.optimizer.zero_grad(set_to_none=True)
        scheduler_step(self.scheduler)
        return StepResult(loss_l, loss_c, finite, lr_used, bool(stats[3] > 0))

    def _update(self, loss_sum: torch.Tensor, n_global: torch.Tensor) -> bool:
        """Backward and optimiser step; False when the gradient norm is not finite (the step is then skipped)."""
        s = self.s
        # DDP averages gradients over ranks: scale by world size so the result is d(sum)/N_global
        loss = loss_sum * (self.dist.world_size / n_global)
        self.scaler.scale(loss).backward()
        finite = True
        if s.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
            if not self.scaler.is_enabled() and not torch.isfinite(gnorm):
                finite = False  # finite loss, exploding gradient: skip this step as well
        if finite or self.scaler.is_enabled():  # (the loss scaler skips non-finite steps itself)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return finite

    def _budget_used(self) -> bool:
        return self.s.time_budget is not None and time.perf_counter() - self.t_start >= self.s.time_budget

    def _stop_reason(self, stop: StopRequest) -> str:
        if stop.requested or not self.main:
            return f"{stop.name or 'a signal'} received"
        return f"time budget of {self.s.time_budget:g} s used"

    def _fit_to_budget(self, iteration: int) -> None:
        """``--max_iter auto``: once the first iterations are timed, choose ``max_iter`` so that training ends at
        ~``--time_budget``; the LR schedule, the checkpoints' config and the progress display follow."""
        measured = self.meter.observe(iteration, time.perf_counter() - self.t_start)
        if measured is None:
            return
        s, self.meter = self.s, None
        measured = share_from_main(measured, self.dist, self.device)
        nominal, images = s.max_iter, s.batch_size * self.dist.world_size
        s.max_iter = fit_max_iter(measured, s.time_budget)
        s.lr_steps = scale_steps(s.lr_steps, nominal, s.max_iter)
        s.max_iter_auto, s.max_iter_fit = False, fit_record(measured, images, s.time_budget, nominal)
        set_schedule_length(self.scheduler, s.max_iter, s.lr_steps)
        self.checkpoints.config = run_config(s, self.model_config, self.dist.world_size)
        if self.bar is not None:
            self.bar.total = s.max_iter
            self.bar.refresh()
        info(f"--max_iter auto: {s.max_iter_fit['images_per_s']:.1f} img/s over iterations "
             f"{measured.done - measured.iterations + 1}-{measured.done} ({measured.seconds:.1f} s) -> training "
             f"{s.max_iter} iterations to fill the {s.time_budget:g} s budget ({s.lr_schedule} LR schedule over "
             f"them)", self.main)
        if s.max_iter <= s.warmup:
            note(f"the budget holds only {s.max_iter} iterations, inside the warm-up of {s.warmup}: the LR will not "
                 "decay — give a longer --time_budget or a shorter --warmup", self.main)

    # ---- bookkeeping ------------------------------------------------------------------------------------

    def bookkeeping(self, iteration: int, r: StepResult) -> None:
        """After iteration ``iteration`` (1-based): losses, guard, log row / bar, checkpoint, mAP."""
        s = self.s
        self.window.add(r.loss_l, r.loss_c, r.finite)
        if r.finite:
            self.guard.update(True, iteration)
        else:
            last_good = self.checkpoints.last_good()
            self.guard.update(False, iteration, f"; the last good checkpoint is {last_good}" if last_good else
                              "; no checkpoint was written yet")
        if self.main and (iteration % s.log_every == 0 or iteration == s.max_iter):
            self._log_row(iteration, r.lr)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {r.loss_l + r.loss_c:.3f} (loc {r.loss_l:.3f} conf {r.loss_c:.3f}) "
                                     f"lr {r.lr:.1e}", refresh=False)
        if self.main and iteration % s.save_every == 0 and iteration < s.max_iter and not r.stop:
            self._save(iteration, iteration)
        if s.eval_every and iteration % s.eval_every == 0:
            if self.main:
                evaluate(s, self.model, self.class_names, self.device, self.use_amp, self.eval_dataset,
                         self.eval_log, iteration)
                self.model.train()
            barrier(self.dist)

    def _log_row(self, iteration: int, lr: float) -> None:
        s = self.s
        row = self.window.row(iteration, lr, s.batch_size * self.dist.world_size, self.guard.total,
                              time.perf_counter() - self.t_start)
        self.log.log(row)
        if self.bar is None:  # not a terminal: one line per --log_every (ssd.pytorch printed these)
            print(log_line(row, None if s.max_iter_auto else s.max_iter, self.guard.total), flush=True)

    def _save(self, tag: Any, iteration: int) -> str:
        return self.checkpoints.save(tag, iteration, self.model, self.optimizer, self.scheduler, self.scaler)

    # ---- the end: completed, time budget, or signal -----------------------------------------------------

    def finish(self, iteration: int, exit_message: str) -> None:
        if self.main:
            if exit_message.endswith("received"):
                last = self.checkpoints.last_saved
                path = last[1] if last and last[0] == iteration else self._save(iteration, iteration)
                info(f"\nstopped at iteration {iteration} ({exit_message}); saved {path} — continue with "
                     f"--resume {path}")
            else:
                path = self._save("final", iteration)
                skipped = f"; {self.guard.total} non-finite steps were skipped" if self.guard.total else ""
                info(f"\ntraining finished at iteration {iteration}"
                     f"{f' ({exit_message})' if exit_message else ''}; saved {path}{skipped}")
        barrier(self.dist)

    def _close(self) -> None:
        for closable in (self.bar, self.log, self.eval_log):
            if closable is not None:
                closable.close()


def note_ignored_flags(s: argparse.Namespace, device: torch.device, dist: DistInfo) -> None:
    """Notes for flags that are accepted but have no effect here."""
    main = dist.is_main
    if s.cuda and device.type != "cuda":
        note("--cuda true, but CUDA is not available: training on the CPU", main)
    if s.visdom:
        note("--visdom is no longer used: losses go to the CSV log in --save_folder (and TensorBoard events "
             "when tensorboard is installed)", main)
    if s.sync_bn and not (dist.enabled and device.type == "cuda" and s.batch_norm):
        note("--sync_bn only applies to --batch_norm models under torchrun on GPUs; ignored", main)


def announce_run(s: argparse.Namespace, model: torch.nn.Module, device: torch.device, dist: DistInfo,
                 num_classes: int, num_images: int, use_amp: bool, start_iter: int) -> None:
    """The two lines that open a run: the model, and how it is trained."""
    n_params = sum(p.numel() for p in model.parameters())
    variant = f"{' +BN' if s.batch_norm else ''}{' stem s2' if s.stem == 's2' else ''}"
    amp = f"on ({str(amp_dtype(device)).replace('torch.', '')})" if use_amp else "off"
    info(f"SSD{s.size} width {s.width:g}{variant}: {n_params / 1e6:.2f} M parameters, "
         f"{num_classes} classes (with background); {num_images} training images from {s.dataset_root}")
    info(f"device {device}{f' x {dist.world_size} processes' if dist.enabled else ''}; batch {s.batch_size}"
         f"{' per process' if dist.enabled else ''}; {s.optimizer} lr {s.lr:g} ({s.lr_schedule}, warm-up "
         f"{s.warmup}); amp {amp}; channels_last {'on' if s.channels_last else 'off'}; "
         f"iterations {start_iter}..{_planned_iterations(s, start_iter)}")


def _planned_iterations(s: argparse.Namespace, start_iter: int) -> str:
    """The end of the run as announced: a number, or how --max_iter auto will choose it."""
    if s.max_iter_auto:
        return (f"auto (chosen after iteration {start_iter + SKIP_ITERATIONS + MEASURE_ITERATIONS} to fill the "
                f"{s.time_budget:g} s budget)")
    if s.max_iter_fit:
        return f"{s.max_iter} (--max_iter auto: {s.max_iter_fit['images_per_s']:.1f} img/s measured)"
    return str(s.max_iter)
