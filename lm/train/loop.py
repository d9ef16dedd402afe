"""Pretraining: the experiment's data and a fresh (or resumed) state through the fit loop.

    config -> Trainer (Run + optimizer + compiled steps) -> fit(initial state, batches, eval sets)
           -> workdir/{config.json, checkpoints/, metrics.jsonl, tensorboard/, samples.txt}
"""
from __future__ import annotations

import json
import os
from typing import Optional

import jax

from lm.data.loader import Prefetcher
from lm.fileio import write_atomically
from lm.train.fit import SampleHook, fit
from lm.train.run import Run
from lm.train.trainer import Trainer

__all__ = ["Trainer", "evaluate_checkpoint", "pretrain", "run_pretrain", "validate_pretrain"]


def pretrain(config, workdir: str, devices=None) -> dict:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint. Returns final metrics."""
    trainer = Trainer(config, workdir, devices)
    batches = trainer.train_iterator()
    if trainer.exp.data.prefetch:
        batches = Prefetcher(batches, trainer.exp.data.prefetch)
    final, _ = fit(trainer, trainer.init_state, batches, trainer.eval_sets(), hooks=[SampleHook()])
    return final


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None, devices=None) -> dict:
    """Validation loss / perplexity of a checkpoint in ``workdir`` (the latest by default) with
    ``config``'s data (e.g. a longer context than in training); the model must be the saved one."""
    run = Run(config, workdir, devices)
    params, step = run.restore(step)
    scores = {"step": step, **run.evaluate(params)}
    if jax.process_index() == 0:
        write_atomically(os.path.join(workdir, f"eval_step{step}.json"), json.dumps(scores, indent=2) + "\n")
    return scores


def run_pretrain(config, workdir: str, devices=None) -> dict:
    """Pretrains (resuming from the workdir's checkpoint); the last logged value of every metric,
    so a run that was already finished still reports its training and validation figures."""
    from lm.train.metrics import last_logged
    final = pretrain(config, workdir, devices)
    return {**last_logged(workdir), **final}


def validate_pretrain(config) -> None:
    """Every section pretraining reads (model, data, optimizer, train, mesh, peft)."""
    from lm.train.experiment import Experiment
    Experiment.from_config(config)
