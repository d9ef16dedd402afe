"""One fit loop for every trainer: pretraining and SFT are "data + initial state + hooks".

    fit(trainer, initial_state, train_batches, eval_sets, hooks)
      -> workdir lock and checks, resume (train state and data position, from the newest
         sound checkpoint) or initial_state(), config.json, jit(train_step) with a progress
         bar, metrics (JSONL, TensorBoard), validation loss and hooks every eval_every steps,
         checkpoints, the loss plot
      bad steps are skipped inside the step (lm.train.spikes); a stretch of them rolls back to
      the last checkpoint and skips data (lm.train.rollback); SIGTERM/SIGINT save and return
      (lm.train.preempt); a failed background save stops the run (lm.train.checkpoint)

A hook is an object with any of ``start(trainer, state, resumed)``, ``evaluate(trainer, state,
step, bar, writer) -> dict`` (at each evaluation, after the validation loss) and ``end(trainer, state)
-> dict``; what they return joins the final metrics.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from lm.data.loader import Prefetcher
from lm.fileio import append_text
from lm.train import hardware
from lm.train.checkpoint import Checkpointer
from lm.train.lock import workdir_lock
from lm.train.metrics import MetricsWriter
from lm.train.plot import plot_losses
from lm.train.preempt import StopRequests
from lm.train.rollback import SpikeWatch
from lm.train.spikes import PER_STEP_METRICS
from lm.train.state import TrainState
from lm.train.workdir import check_workdir, save_config

log = logging.getLogger(__name__)


def fit(trainer, initial_state: Callable[[], TrainState], train_batches, eval_sets: dict,
        hooks: Sequence = ()) -> tuple[dict, TrainState]:
    """Trains ``trainer``'s experiment in its workdir from its latest checkpoint, or from
    ``initial_state()`` when it has none. Returns the final metrics and the final state. One run
    at a time trains in a workdir (``lm.train.lock``)."""
    workdir = trainer.workdir
    os.makedirs(workdir, exist_ok=True)
    lock = workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    try:
        with lock:
            return _fit_locked(trainer, initial_state, train_batches, eval_sets, hooks)
    finally:
        if isinstance(train_batches, Prefetcher):
            train_batches.close()


def _fit_locked(trainer, initial_state, train_batches, eval_sets: dict, hooks) -> tuple[dict, TrainState]:
    exp, workdir = trainer.exp, trainer.workdir
    check_workdir(workdir, exp)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), exp.train.keep_checkpoints,
                                exp.train.async_checkpoint)
    try:
        state, resumed = _restore_or_init(trainer, checkpointer, train_batches, initial_state)
        final = _call_hooks(hooks, "start", trainer, state, resumed)
        save_config(workdir, trainer.config, exp)
        writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
        try:
            with StopRequests(exp.train.stop_on_signal) as stop:
                loop = _Loop(trainer, checkpointer, writer, hooks, train_batches, eval_sets,
                             initial_state, stop)
                metrics, state = loop.run(state)
            final.update(metrics)
        finally:
            writer.close()
    except BaseException as error:
        failed_save = checkpointer.close(raise_errors=False)
        if failed_save is not None and isinstance(error, OSError):
            # A full disk often shows first in the metrics written while the save fails.
            raise failed_save from None
        raise
    checkpointer.close()
    if "stopped_by" not in final:
        final.update(_call_hooks(hooks, "end", trainer, state))
    if jax.process_index() == 0:
        plot_losses(workdir)
    return final, state


def _call_hooks(hooks, name: str, *args) -> dict:
    out: dict = {}
    for hook in hooks:
        method = getattr(hook, name, None)
        if method is not None:
            out.update(method(*args) or {})
    return out


def _restore_or_init(trainer, checkpointer: Checkpointer, train_batches, initial_state):
    restored = checkpointer.restore_latest(trainer.abstract_state)
    if restored is None:
        return initial_state(), False
    state, data_state, step = restored
    train_batches.set_state(data_state)
    log.info("resumed from step %d in %s", step, checkpointer.directory)
    return state, True


def _announce(trainer, start: int, tokens_per_step: int) -> None:
    if jax.process_index() != 0:
        return
    mesh = ", ".join(f"{axis}={size}" for axis, size in trainer.mesh.shape.items())
    resumed = f", resuming at step {start}" if start else ""
    print(f"training {trainer.num_params:,} parameters on {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), mesh {mesh}, {trainer.exp.train.steps} steps of "
          f"{tokens_per_step:,} tokens{resumed}; writing to {trainer.workdir}", flush=True)


READ_LAG = 2  # steps between running a step and reading its guard metrics


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class _Loop:
    """The steps of one fit: train, log, evaluate, checkpoint; bad steps and stretches of them
    (lm.train.spikes, lm.train.rollback); a requested stop (lm.train.preempt).

    A step's guard metrics are read two steps late: the step after it is running and the one after
    that is queued, so the device never waits for the host (reading one step late cost about 1% of
    a CPU step). At a checkpoint every step is read first, so a stretch of skips that calls for a
    rollback is never checkpointed."""

    def __init__(self, trainer, checkpointer, writer, hooks, batches, eval_sets, initial_state, stop):
        self.trainer, self.checkpointer, self.writer, self.hooks = trainer, checkpointer, writer, hooks
        self.batches, self.eval_sets, self.initial_state, self.stop = batches, eval_sets, initial_state, stop
        self.cfg = trainer.exp.train
        self.watch = SpikeWatch(trainer.workdir, self.cfg, write=jax.process_index() == 0)
        self.tokens_per_step = trainer.exp.data.batch_size * trainer.exp.data.seq_len
        self.peak = hardware.vendor_peak_flops() or hardware.measure_peak_matmul_flops(seconds=0.5)
        self.final: dict = {}
        self.save_due = False

    def run(self, state: TrainState) -> tuple[dict, TrainState]:
        cfg, trainer = self.cfg, self.trainer
        step = int(state.step)
        _announce(trainer, step, self.tokens_per_step)
        self.bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not cfg.progress or jax.process_index() != 0)
        self._restart_window()
        pending: collections.deque = collections.deque()  # (step, metrics) not yet read
        while step < cfg.steps:
            state, metrics = trainer.train_step(state, trainer.place_batch(next(self.batches)))
            step += 1
            self.window_steps += 1
            self.bar.update(1)
            pending.append((step, metrics))
            if len(pending) > READ_LAG and self._observe(pending, keep=READ_LAG):
                state, step = self._roll_back(step, "skipped steps in a row")
                continue
            self.checkpointer.check_for_errors()
            if step % cfg.log_every == 0 or step == cfg.steps:
                self._log(step, metrics)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                self.final.update(_evaluate(trainer, state, self.eval_sets, self.writer, step,
                                            self.bar, self.hooks))
                self._restart_window()
            self.save_due |= step % cfg.checkpoint_every == 0 or step == cfg.steps
            stopping = self.stop.reached(step)
            if not (self.save_due or stopping):
                continue
            if self._observe(pending, keep=0):
                state, step = self._roll_back(step, "skipped steps in a row")
                continue
            if self.watch.in_streak and not (stopping or step == cfg.steps):
                continue  # checkpoint at the first step the guard accepts again
            if not bool(_all_finite(state)):
                state, step = self._roll_back(step, "non-finite parameters")
                continue
            self.checkpointer.save(step, state, self.batches.get_state(), force=True)
            self.save_due = False
            if stopping:
                return self._stopped(step), state
        self._observe(pending, keep=0)
        self.bar.close()
        self.checkpointer.wait()
        self.final.update(step=int(state.step), num_params=trainer.num_params)
        return self.final, state

    def _observe(self, pending: collections.deque, keep: int) -> bool:
        """Reads the guard's decisions of all but the last ``keep`` pending steps, oldest first;
        True (with the queue emptied) when a rollback is due."""
        while len(pending) > keep:
            if self.watch.observe(*pending.popleft()):
                pending.clear()
                return True
        return False

    def _roll_back(self, step: int, why: str) -> tuple[TrainState, int]:
        """The last checkpoint (or the initial state) with the next batches skipped."""
        self.watch.check_budget(step, why, self.checkpointer.latest_step())
        restored = self.checkpointer.restore_latest(self.trainer.abstract_state)
        state, to_step = (restored[0], restored[2]) if restored else (self.initial_state(), 0)
        for _ in range(self.cfg.spike_skip_batches):
            next(self.batches)
        self.watch.rolled_back(step, to_step, why)
        self.bar.write(f"step {step}: {why}; rolled back to step {to_step} and skipped "
                       f"{self.cfg.spike_skip_batches} batches (rollback {self.watch.rollbacks} of "
                       f"at most {self.cfg.spike_max_rollbacks}; see spikes.jsonl)")
        self.bar.n = to_step
        self.bar.refresh()
        self.save_due = self.watch.in_streak = False
        self._restart_window()
        return state, to_step

    def _log(self, step: int, metrics: dict) -> None:
        metrics = jax.device_get(metrics)  # waits for the step: the window's time is real
        metrics = {k: v for k, v in metrics.items() if k not in PER_STEP_METRICS}
        tokens_per_sec = self.window_steps * self.tokens_per_step / (time.perf_counter() - self.window_start)
        row = self.writer.write(step, {**metrics, "train/tokens_per_sec": tokens_per_sec,
                                       "train/mfu": tokens_per_sec * self.trainer.flops_per_token / self.peak,
                                       "train/rollbacks": self.watch.rollbacks,
                                       **self.trainer.schedule_metrics})
        self.bar.set_postfix(loss=f"{row['train/loss']:.3f}", tok_s=f"{tokens_per_sec:,.0f}")
        self.final.update(row)
        self._restart_window()

    def _restart_window(self) -> None:
        self.window_start, self.window_steps = time.perf_counter(), 0

    def _stopped(self, step: int) -> dict:
        self.bar.close()
        self.checkpointer.wait()
        name = self.stop.signal_name
        if jax.process_index() == 0:
            print(f"stopped by {name} after step {step}: checkpoint saved in "
                  f"{self.checkpointer.directory}; run the same command to resume", flush=True)
        self.final.update(step=step, num_params=self.trainer.num_params, stopped_by=name)
        return self.final


def _evaluate(trainer, state, eval_sets, writer, step: int, bar, hooks) -> dict:
    scores = trainer.validation(state.params, eval_sets)
    writer.write(step, scores)
    headline = trainer.eval_headline
    if headline is None:
        bar.write(f"step {step}: eval/loss {scores['eval/loss']:.4f}  "
                  f"perplexity {scores['eval/perplexity']:.2f}")
    elif headline:
        bar.write(f"step {step}: " + "  ".join(f"{k} {scores[k]:.4f}" for k in headline if k in scores))
    extra = _call_hooks(hooks, "evaluate", trainer, state, step, bar, writer)
    return {**scores, **extra}


class SampleHook:
    """A text sample at each evaluation (``config.train.sample_*``) to samples.txt, TensorBoard
    and the console."""

    def evaluate(self, trainer, state, step: int, bar, writer) -> dict:
        if not (trainer.exp.train.sample_tokens and trainer.can_sample):
            return {}
        text = trainer.sample(state.params, seed=step)
        if jax.process_index() == 0:
            writer.write_text(step, "samples", text)
            append_text(os.path.join(trainer.workdir, "samples.txt"), f"=== step {step} ===\n{text}\n\n")
            bar.write(f"--- sample at step {step} ---\n{text}\n---")
        return {}
