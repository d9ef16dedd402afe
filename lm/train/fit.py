"""One fit loop for every trainer: pretraining and SFT are "data + initial state + hooks".

    fit(trainer, initial_state, train_batches, eval_sets, hooks)
      -> workdir checks, resume (train state and data position) or initial_state(),
         config.json, jit(train_step) with a progress bar, metrics (JSONL, TensorBoard),
         validation loss and hooks every eval_every steps, checkpoints, the loss plot

A hook is an object with any of ``start(trainer, state, resumed)``, ``evaluate(trainer, state,
step, bar, writer) -> dict`` (at each evaluation, after the validation loss) and ``end(trainer, state)
-> dict``; what they return joins the final metrics.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Callable, Sequence

import jax
from tqdm.auto import tqdm

from lm.data.loader import Prefetcher, to_global
from lm.fileio import append_text
from lm.train import hardware
from lm.train.checkpoint import Checkpointer
from lm.train.lock import workdir_lock
from lm.train.metrics import MetricsWriter
from lm.train.plot import plot_losses
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
            metrics, state = _loop(trainer, state, train_batches, eval_sets, checkpointer, writer, hooks)
            final.update(metrics)
        finally:
            writer.close()
    finally:
        checkpointer.close()
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
    step = checkpointer.latest_step()
    if step is None:
        return initial_state(), False
    state, data_state = checkpointer.restore(step, trainer.abstract_state)
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


def _loop(trainer, state: TrainState, train_batches, eval_sets, checkpointer, writer, hooks):
    exp, cfg = trainer.exp, trainer.exp.train
    start = int(state.step)
    tokens_per_step = exp.data.batch_size * exp.data.seq_len
    peak = hardware.vendor_peak_flops() or hardware.measure_peak_matmul_flops(seconds=0.5)
    _announce(trainer, start, tokens_per_step)
    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.progress or jax.process_index() != 0,
               desc="train", unit="step", dynamic_ncols=True)
    final: dict = {}
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start + 1, cfg.steps + 1):
        state, metrics = trainer.train_step(state, to_global(next(train_batches), trainer.batch_sharding))
        window_steps += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            metrics = jax.device_get(metrics)  # waits for the step: the window's time is real
            tokens_per_sec = window_steps * tokens_per_step / (time.perf_counter() - window_start)
            row = writer.write(step, {**metrics, "train/tokens_per_sec": tokens_per_sec,
                                      "train/mfu": tokens_per_sec * trainer.flops_per_token / peak,
                                      **trainer.schedule_metrics})
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", tok_s=f"{tokens_per_sec:,.0f}")
            final.update(row)
            window_start, window_steps = time.perf_counter(), 0
        if step % cfg.eval_every == 0 or step == cfg.steps:
            final.update(_evaluate(trainer, state, eval_sets, writer, step, bar, hooks))
            window_start, window_steps = time.perf_counter(), 0
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpointer.save(step, state, train_batches.get_state(), force=True)
    bar.close()
    checkpointer.wait()
    final["step"] = int(state.step)
    final["num_params"] = trainer.num_params
    return final, state


def _evaluate(trainer, state, eval_sets, writer, step: int, bar, hooks) -> dict:
    scores = trainer.validation(state.params, eval_sets)
    writer.write(step, scores)
    bar.write(f"step {step}: eval/loss {scores['eval/loss']:.4f}  "
              f"perplexity {scores['eval/perplexity']:.2f}")
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
