"""What the fit loop does about bad steps: record each skipped step, and after a stretch of them
(or non-finite parameters at a checkpoint) roll back to the last checkpoint and skip the batches
that caused it, as PaLM did by hand for its loss spikes. After ``spike_max_rollbacks`` rollbacks
the run stops (exit code 2) with its last finite checkpoint kept.

Every event is a line of ``<workdir>/spikes.jsonl``: ``skip`` (step, reason, loss, gradient norm,
their z-scores, skips in a row), ``rollback`` (from and to which step, batches skipped, why) and
``stopped``. The ``train/skips`` metric counts the skips of the steps that stand (it lives in the
optimizer state, so a rollback discards it with the steps it undoes); this file keeps them all.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from lm.fileio import append_text
from lm.train.errors import RunStopped
from lm.train.metrics import json_value, repair_torn_tail
from lm.train.spikes import REASONS

_READ = ("train/skip_reason", "train/consecutive_skips", "train/loss", "train/grad_norm",
         "train/loss_zscore", "train/grad_norm_zscore")


class SpikeWatch:
    def __init__(self, workdir: str, train_cfg, write: bool = True):
        self.path = os.path.join(workdir, "spikes.jsonl")
        self.cfg = train_cfg
        self.write = write
        self.rollbacks = 0
        self.in_streak = False  # the last observed step was skipped
        if write:
            repair_torn_tail(self.path)

    def observe(self, step: int, metrics: dict) -> bool:
        """Reads ``step``'s guard metrics (waiting for that step), records a skip; True when a
        rollback is due."""
        if "train/consecutive_skips" not in metrics:
            return False
        # One scalar per step; the rest only for a skipped step (a skip makes the count positive).
        self.in_streak = int(np.asarray(metrics["train/consecutive_skips"])) > 0
        if not self.in_streak:
            return False
        values = {k: np.asarray(v).item() for k, v in jax.device_get({k: metrics[k] for k in _READ}).items()}
        self._record({"step": step, "event": "skip", "reason": REASONS[values["train/skip_reason"]],
                      "loss": values["train/loss"], "grad_norm": values["train/grad_norm"],
                      "loss_zscore": values["train/loss_zscore"],
                      "grad_norm_zscore": values["train/grad_norm_zscore"],
                      "in_a_row": values["train/consecutive_skips"]})
        return values["train/consecutive_skips"] >= self.cfg.spike_rollback_after

    def check_budget(self, step: int, why: str, last_checkpoint) -> None:
        """Raises RunStopped when the rollbacks are used up."""
        if self.rollbacks < self.cfg.spike_max_rollbacks:
            return
        kept = (f"the last finite checkpoint, step {last_checkpoint}, is kept"
                if last_checkpoint is not None else "no checkpoint had been written")
        self._record({"step": step, "event": "stopped", "reason": why, "rollbacks": self.rollbacks})
        raise RunStopped(
            f"training diverged: {why} at step {step} after {self.rollbacks} rollback(s) "
            f"(config.train.spike_max_rollbacks={self.cfg.spike_max_rollbacks}); {kept}. Lower "
            f"config.optimizer.lr or raise config.optimizer.warmup_steps; events are in {self.path}.")

    def rolled_back(self, step: int, to_step: int, why: str) -> None:
        self.rollbacks += 1
        self._record({"step": step, "event": "rollback", "to_step": to_step, "reason": why,
                      "skipped_batches": self.cfg.spike_skip_batches, "rollback": self.rollbacks})

    def _record(self, event: dict) -> None:
        if self.write:
            event = {k: json_value(v) if isinstance(v, float) else v for k, v in event.items()}
            append_text(self.path, json.dumps(event) + "\n")
