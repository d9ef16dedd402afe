"""The pretraining loop: build everything from the config, train, evaluate, sample, checkpoint.

    config -> mesh, data iterator, model/optimizer state (sharded) -> jit(train_step) loop
           -> workdir/{config.json, checkpoints/, metrics.jsonl, tensorboard/, samples.txt}
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Optional

import jax
from tqdm.auto import tqdm

from lm.data import objectives
from lm.data import pipeline as data_lib
from lm.data.loader import Prefetcher, to_global
from lm.infer.decode import GENERATING_ARCHS, DecodeSettings, generate_past_context
from lm.parallel import make_mesh
from lm.parallel import sharding as shd
from lm.parallel.axes import axis_rules
from lm.parallel.pipeline import bubble_fraction
from lm.parallel.rules import layout as named_layout
from lm.peft.optim import frozen
from lm.peft.params import trainable_mask
from lm.train import hardware
from lm.train.checkpoint import Checkpointer, CheckpointError
from lm.train.metrics import MetricsWriter, flops_per_token
from lm.train.plot import plot_losses
from lm.train.experiment import Experiment, check_layout
from lm.train.optimizer import make_optimizer, make_schedule
from lm.train.state import (TrainState, abstract_model, abstract_train_state, create_state,
                            param_count, state_shardings)
from lm.train.step import StepConfig, make_eval_step, make_train_step
from lm.train.workdir import check_workdir, save_config

log = logging.getLogger(__name__)


class Trainer:
    """Owns the compiled steps and the state for one experiment in one workdir."""

    def __init__(self, config, workdir: str, devices=None):
        self.workdir = workdir
        self.exp = exp = Experiment.from_config(config)
        self.mesh = make_mesh(exp.mesh, devices)
        self.layout = named_layout(exp.mesh.rules)
        self.rules = self.layout.params  # parameters and activations
        self.batch_sharding = shd.batch_sharding(self.mesh, self.rules)
        check_layout(exp, self.mesh, self.batch_sharding)
        self.schedule = make_schedule(exp.optimizer, exp.train.steps)
        self.graphdef, abstract_state = abstract_model(exp.model)
        self.num_params = param_count(abstract_state)
        self.trainable = peft_trainable(abstract_state.to_pure_dict(), exp.model.peft)
        self.optimizer = make_optimizer(exp.optimizer, exp.train.steps)
        if self.trainable is not None:  # PEFT: frozen leaves get no update and no optimizer state
            self.optimizer = frozen(self.optimizer, self.trainable)
        position = exp.model.max_len * exp.model.d_model if exp.model.positions == "learned" else 0
        self.flops_per_token = flops_per_token(exp.model, self.num_params, position, exp.data.seq_len)
        self.shardings = state_shardings(abstract_state, self.optimizer, self.mesh, self.layout)
        self.abstract_state = abstract_train_state(abstract_state, self.optimizer, self.shardings)
        step_cfg = StepConfig(z_loss=exp.train.z_loss, grad_accum_steps=exp.train.grad_accum_steps,
                              seed=exp.seed, packed=exp.data.packing)
        self.train_step = jax.jit(
            self._with_rules(make_train_step(self.graphdef, self.optimizer, self.schedule, step_cfg)),
            in_shardings=(self.shardings, self.batch_sharding),
            out_shardings=(self.shardings, shd.replicated(self.mesh)), donate_argnums=0)
        self.eval_step = jax.jit(self._with_rules(make_eval_step(self.graphdef, exp.data.packing)),
                                 in_shardings=(self.shardings.params, self.batch_sharding),
                                 out_shardings=shd.replicated(self.mesh))

    def peft_summary(self) -> dict:
        """The trained share of the model: method, trainable parameters, optimizer-state bytes."""
        params = self.abstract_state.params
        trainable = (self.num_params if self.trainable is None else
                     sum(int(p.size) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(self.trainable)) if t))
        opt_bytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(self.abstract_state.opt_state))
        return {"peft/method": self.exp.model.peft.method, "peft/trainable_params": trainable,
                "peft/optimizer_state_bytes": opt_bytes}

    @property
    def schedule_metrics(self) -> dict:
        """Constants of the parallel schedule worth logging next to the speed."""
        model = self.exp.model
        if not model.pipelined:
            return {}
        return {"train/bubble_fraction": bubble_fraction(
            model.pipeline_stages, model.microbatches, model.pipeline_repeats)}

    def _with_rules(self, fn):
        def traced(*args):
            with axis_rules(self.mesh, self.rules):
                return fn(*args)
        return traced

    def init_state(self) -> TrainState:
        return create_state(self.exp.model, self.optimizer, self.mesh, self.exp.seed, self.layout)[1]

    def eval_sets(self) -> dict[str, list]:
        """Validation batches by source: one set, or one per corpus of a mixture."""
        data, index, count = self.exp.data, jax.process_index(), jax.process_count()
        if data.mixture:
            from lm.data.mixture import source_eval_batches
            sets = source_eval_batches(data, index, count)
        else:
            sets = {"": data_lib.make_eval_batches(data, index, count)}
        return {name: objectives.eval_batches(batches, data, self.exp.model.arch)
                for name, batches in sets.items()}

    def train_iterator(self):
        """This host's training batches for the experiment's objective and architecture."""
        exp = self.exp
        windows = data_lib.make_train_iterator(exp.data, exp.seed, jax.process_index(),
                                               jax.process_count())
        return objectives.train_iterator(windows, exp.data, exp.model.arch, exp.seed)

    @property
    def can_sample(self) -> bool:
        """Generation from a prompt with the cached decoder (an encoder does not generate)."""
        return self.exp.model.arch in GENERATING_ARCHS

    def evaluate(self, params, sets: dict[str, list]) -> dict:
        """eval/loss over every set (token-weighted), and eval/<source>/loss for each of several."""
        sums = {name: self._loss_sums(params, batches) for name, batches in sets.items()}
        scores = _scores("eval", *map(sum, zip(*sums.values())))
        if len(sets) > 1:
            for name, (loss_sum, weight_sum) in sums.items():
                scores.update(_scores(f"eval/{name}", loss_sum, weight_sum))
            scores.update(self._domain_scores(sums))
        return scores

    def _domain_scores(self, sums: dict) -> dict:
        """eval/domain/<general|specialized>/loss of a mixture, from its sources' sums."""
        from lm.data.mixture import source_domains
        by_domain: dict[str, list] = {}
        for source, domain in source_domains(self.exp.data).items():
            by_domain.setdefault(domain, []).append(sums[source])
        return {key: value for domain, parts in by_domain.items()
                for key, value in _scores(f"eval/domain/{domain}", *map(sum, zip(*parts))).items()}

    def _loss_sums(self, params, batches) -> tuple[float, float]:
        loss_sum = weight_sum = 0.0
        for batch in batches:
            out = self.eval_step(params, to_global(batch, self.batch_sharding))
            loss_sum += float(out["loss_sum"])
            weight_sum += float(out["weight_sum"])
        return loss_sum, weight_sum

    def sample(self, params, seed: int) -> str:
        """A text sample; every process must call it (parameters are gathered collectively)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            params = multihost_utils.process_allgather(params, tiled=True)
        train, vocab = self.exp.train, data_lib.vocabulary(self.exp.data)
        prompt = vocab.encode(train.sample_prompt) or [vocab.pad_id]
        context = min(self.exp.data.seq_len, self.exp.model.max_len)
        new_tokens = train.sample_tokens
        if self.exp.model.arch == "encoder_decoder":  # the decoder's positions end at the context
            prompt, new_tokens = prompt[-context:], min(new_tokens, context - 1)
        settings = DecodeSettings(max_new_tokens=new_tokens, temperature=train.sample_temperature,
                                  top_k=train.sample_top_k, seed=seed)
        params = jax.device_get(params)  # sampling is tiny; avoid resharding the whole loop
        tokens = generate_past_context(self.graphdef, params, prompt, settings, context)
        return train.sample_prompt + vocab.decode(tokens)


def peft_trainable(params: dict, peft):
    """Which parameters a PEFT method trains, or None when every parameter trains ('none' is
    ordinary training, 'full' full fine-tuning)."""
    return None if peft.method in ("none", "full") else trainable_mask(params, peft)


def _scores(prefix: str, loss_sum: float, weight_sum: float) -> dict:
    loss = loss_sum / max(weight_sum, 1.0)
    return {f"{prefix}/loss": loss, f"{prefix}/perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}/bits_per_token": loss / math.log(2)}


def pretrain(config, workdir: str, devices=None) -> dict:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint. Returns final metrics."""
    trainer = Trainer(config, workdir, devices)
    exp = trainer.exp
    os.makedirs(workdir, exist_ok=True)
    check_workdir(workdir, exp)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), exp.train.keep_checkpoints,
                                exp.train.async_checkpoint)
    train_iter = trainer.train_iterator()
    if exp.data.prefetch:
        train_iter = Prefetcher(train_iter, exp.data.prefetch)
    try:
        state = _restore_or_init(trainer, checkpointer, train_iter)
        save_config(workdir, config, exp)
        writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
        eval_sets = trainer.eval_sets()
        try:
            final, _ = train_loop(trainer, state, train_iter, eval_sets, checkpointer, writer)
        finally:
            writer.close()
    finally:
        checkpointer.close()
        if isinstance(train_iter, Prefetcher):
            train_iter.close()
    if jax.process_index() == 0:
        plot_losses(workdir)
    return final


def _restore_or_init(trainer: Trainer, checkpointer: Checkpointer, train_iter) -> TrainState:
    step = checkpointer.latest_step()
    if step is None:
        return trainer.init_state()
    state, data_state = checkpointer.restore(step, trainer.abstract_state)
    train_iter.set_state(data_state)
    log.info("resumed from step %d in %s", step, checkpointer.directory)
    return state


def train_loop(trainer: Trainer, state: TrainState, train_iter, eval_sets, checkpointer,
                writer: MetricsWriter) -> tuple[dict, TrainState]:
    exp, cfg = trainer.exp, trainer.exp.train
    start = int(state.step)
    tokens_per_step = exp.data.batch_size * exp.data.seq_len
    peak = hardware.vendor_peak_flops() or hardware.measure_peak_matmul_flops(seconds=0.5)
    if jax.process_index() == 0:
        mesh = ", ".join(f"{axis}={size}" for axis, size in trainer.mesh.shape.items())
        resumed = f", resuming at step {start}" if start else ""
        print(f"training {trainer.num_params:,} parameters on {jax.device_count()} "
              f"{jax.devices()[0].platform} device(s), mesh {mesh}, {cfg.steps} steps of "
              f"{tokens_per_step:,} tokens{resumed}; writing to {trainer.workdir}", flush=True)
    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.progress or jax.process_index() != 0,
               desc="train", unit="step", dynamic_ncols=True)
    final: dict = {}
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start + 1, cfg.steps + 1):
        state, metrics = trainer.train_step(state, to_global(next(train_iter), trainer.batch_sharding))
        window_steps += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - window_start
            tokens_per_sec = window_steps * tokens_per_step / elapsed
            row = writer.write(step, {**metrics, "train/tokens_per_sec": tokens_per_sec,
                                      "train/mfu": tokens_per_sec * trainer.flops_per_token / peak,
                                      **trainer.schedule_metrics})
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", tok_s=f"{tokens_per_sec:,.0f}")
            final.update(row)
            window_start, window_steps = time.perf_counter(), 0
        if step % cfg.eval_every == 0 or step == cfg.steps:
            final.update(_eval_and_sample(trainer, state, eval_sets, writer, step, bar))
            window_start, window_steps = time.perf_counter(), 0
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpointer.save(step, state, train_iter.get_state(), force=True)
    bar.close()
    checkpointer.wait()
    final["step"] = int(state.step)
    final["num_params"] = trainer.num_params
    return final, state


def _eval_and_sample(trainer: Trainer, state, eval_sets, writer, step: int, bar) -> dict:
    scores = trainer.evaluate(state.params, eval_sets)
    writer.write(step, scores)
    bar.write(f"step {step}: eval/loss {scores['eval/loss']:.4f}  "
              f"perplexity {scores['eval/perplexity']:.2f}")
    if trainer.exp.train.sample_tokens and trainer.can_sample:
        text = trainer.sample(state.params, seed=step)
        if jax.process_index() != 0:
            return scores
        writer.write_text(step, "samples", text)
        with open(os.path.join(trainer.workdir, "samples.txt"), "a") as f:
            f.write(f"=== step {step} ===\n{text}\n\n")
        bar.write(f"--- sample at step {step} ---\n{text}\n---")
    return scores


def restore_checkpoint(trainer: Trainer, workdir: str, step: Optional[int] = None) -> tuple[TrainState, int]:
    """The train state saved at ``step`` (default: the latest) in ``workdir``, and its step."""
    checkpoints = os.path.join(workdir, "checkpoints")
    checkpointer = Checkpointer(checkpoints, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {checkpoints}: train first (config.mode='pretrain') "
                                  f"or point --workdir at a trained run")
        state, _ = checkpointer.restore(step, trainer.abstract_state)
    finally:
        checkpointer.close()
    return state, step


def restore_for_eval(config, workdir: str, step: Optional[int] = None, devices=None):
    """(trainer, state, step) of a checkpoint in ``workdir`` (the latest by default), after
    checking that the workdir was trained with this config's model and data."""
    trainer = Trainer(config, workdir, devices)
    check_workdir(workdir, trainer.exp)
    state, step = restore_checkpoint(trainer, workdir, step)
    return trainer, state, step


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None, devices=None) -> dict:
    """Validation loss / perplexity of a checkpoint in ``workdir`` (the latest by default)."""
    trainer, state, step = restore_for_eval(config, workdir, step, devices)
    scores = {"step": step, **trainer.evaluate(state.params, trainer.eval_sets())}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_step{step}.json"), "w") as f:
            json.dump(scores, f, indent=2)
    return scores
