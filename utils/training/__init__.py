"""Training: the library behind train.py, one module per concept (nothing is imported here).

* :mod:`.settings` — defaults, the ``cpu-demo`` preset, which settings a resume restores, resolving and checking
  them; :mod:`.hooks` — the test hooks (``SSD_TEST_*`` environment variables), read once by the CLI;
* :mod:`.trainer` — the run: setup → loop of (step → bookkeeping) → finish (:func:`~.trainer.train`);
* :mod:`.model_setup` — the network from its ModelConfig, starting weights (resume / base network), ``--freeze``;
* :mod:`.resume` — what ``--resume`` names, whether it fits, restoring optimiser / schedule / scaler state;
* :mod:`.sampler` — the endless, sharded, per-sample-seeded data order (:class:`~.sampler.EndlessBatchSampler`);
* :mod:`.schedule` — warm-up + step / cosine LR (:class:`~.schedule.LRSchedule`);
* :mod:`.optim` — parameter groups, SGD / AdamW, freezing VGG blocks; :mod:`.loss` — MultiBox loss as sums;
* :mod:`.checkpoints` — checkpoint dicts, file names, atomic writes, the latest pointer, stale temporary files;
* :mod:`.rng` — RNG state as weights_only-safe tensors; :mod:`.logs` — CSV / TensorBoard log, loss window,
  progress; :mod:`.guards` — non-finite steps, BatchNorm rollback, SIGINT / SIGTERM;
* :mod:`.distributed` — torchrun process group, DDP wrapper, the per-step reduction;
* :mod:`.periodic_eval` — ``--eval_every``: mAP through eval.py's code.
"""
