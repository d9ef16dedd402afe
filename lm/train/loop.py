"""The pretraining loop: build everything from the config, train, evaluate, sample, checkpoint.

    config -> mesh, data iterator, model/optimizer state (sharded) -> jit(train_step) loop
           -> workdir/{config.json, checkpoints/, metrics.jsonl, tensorboard/, samples.txt}
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Optional

import jax
from tqdm.auto import tqdm

from lm.configlib import ConfigError, from_section
from lm.data import pipeline as data_lib
from lm.data.loader import to_global
from lm.infer.sample import generate
from lm.models.config import ModelConfig
from lm.parallel import MeshConfig, batch_axes_size, make_mesh
from lm.parallel import sharding as shd
from lm.parallel.axes import STANDARD_RULES, axis_rules
from lm.train import hardware
from lm.train.checkpoint import Checkpointer, CheckpointError
from lm.train.metrics import MetricsWriter, flops_per_token
from lm.train.optimizer import OptimizerConfig, make_optimizer, make_schedule
from lm.train.state import TrainState, abstract_model, abstract_train_state, create_state, param_count, state_shardings
from lm.train.step import StepConfig, make_eval_step, make_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000               # optimizer updates
    eval_every: int = 250           # validation loss (and samples) every N steps and at the end
    checkpoint_every: int = 500     # and at the end
    keep_checkpoints: int = 3
    async_checkpoint: bool = True   # write checkpoints in the background
    log_every: int = 50             # train metrics to metrics.jsonl / TensorBoard
    grad_accum_steps: int = 1       # microbatches per step (batch_size must divide by it)
    z_loss: float = 0.0             # PaLM uses 1e-4
    sample_tokens: int = 200        # characters/tokens generated at each eval (0: none)
    sample_prompt: str = "\n"
    sample_temperature: float = 0.8
    sample_top_k: int = 0
    progress: bool = True           # progress bar with ETA

    @classmethod
    def from_config(cls, section) -> "TrainConfig":
        cfg = from_section(cls, section, "config.train")
        for field in ("steps", "eval_every", "checkpoint_every", "log_every", "grad_accum_steps"):
            if getattr(cfg, field) <= 0:
                raise ConfigError(f"config.train.{field} must be positive, got {getattr(cfg, field)}")
        return cfg


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The typed sections of one experiment config."""
    model: ModelConfig
    data: data_lib.DataConfig
    optimizer: OptimizerConfig
    train: TrainConfig
    mesh: MeshConfig
    seed: int

    @classmethod
    def from_config(cls, config) -> "Experiment":
        data = data_lib.DataConfig.from_config(config.data)
        model = ModelConfig.from_config(config.model)
        if model.vocab_size == 0:
            model = dataclasses.replace(model, vocab_size=data_lib.vocab_size(data))
        if model.positions == "learned" and model.max_len < data.seq_len:
            raise ConfigError(f"config.model.max_len={model.max_len} is shorter than "
                              f"config.data.seq_len={data.seq_len}")
        return cls(model=model, data=data, optimizer=OptimizerConfig.from_config(config.optimizer),
                   train=TrainConfig.from_config(config.train),
                   mesh=MeshConfig.from_config(config.mesh), seed=int(config.seed))


def check_batch(exp: Experiment, mesh) -> None:
    ways = batch_axes_size(mesh)
    batch, accum = exp.data.batch_size, exp.train.grad_accum_steps
    if batch % accum:
        raise ConfigError(f"config.data.batch_size={batch} is not divisible by "
                          f"config.train.grad_accum_steps={accum}")
    if (batch // accum) % ways:
        raise ConfigError(f"config.data.batch_size={batch} (per microbatch {batch // accum}) is not "
                          f"divisible by the batch axes of the mesh (data x fsdp = {ways}); "
                          f"use a multiple of {ways * accum}")
    if batch % jax.process_count():
        raise ConfigError(f"config.data.batch_size={batch} must divide by the "
                          f"{jax.process_count()} processes")


# Fields that change parameter shapes or meaning; others (remat, attention kernel, dtype,
# dropout) may differ between the run that wrote a checkpoint and the run that resumes it.
_PARAMETER_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads",
                     "head_dim", "d_ff", "max_len", "positions", "norm", "mlp", "block",
                     "tie_embeddings", "use_bias", "scan_layers", "param_dtype")


def check_workdir(workdir: str, exp: Experiment) -> None:
    """Refuses to touch a workdir whose checkpoints belong to a different model."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return
    with open(path) as f:
        saved = json.load(f).get("model", {})
    now = dataclasses.asdict(exp.model)
    changed = [f"model.{name}: saved {saved.get(name)!r}, now {now[name]!r}"
               for name in _PARAMETER_FIELDS if name in saved and saved[name] != now[name]]
    if changed:
        raise CheckpointError(
            f"{workdir} holds checkpoints of a different model ({'; '.join(changed)}). Use a new "
            f"--workdir or the saved configuration; nothing in {workdir} was changed.")


def save_config(workdir: str, config, exp: Experiment) -> None:
    resolved = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    resolved["model"] = dataclasses.asdict(exp.model)  # with the derived vocab_size
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(resolved, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(workdir, "config.json"))


class Trainer:
    """Owns the compiled steps and the state for one experiment in one workdir."""

    def __init__(self, config, workdir: str, devices=None):
        self.config, self.workdir = config, workdir
        self.exp = exp = Experiment.from_config(config)
        self.mesh = make_mesh(exp.mesh, devices)
        check_batch(exp, self.mesh)
        self.rules = STANDARD_RULES
        self.optimizer = make_optimizer(exp.optimizer, exp.train.steps)
        self.schedule = make_schedule(exp.optimizer, exp.train.steps)
        self.graphdef, abstract_state = abstract_model(exp.model)
        self.num_params = param_count(abstract_state)
        position = exp.model.max_len * exp.model.d_model if exp.model.positions == "learned" else 0
        self.flops_per_token = flops_per_token(exp.model, self.num_params, position, exp.data.seq_len)
        self.shardings = state_shardings(abstract_state, self.optimizer, self.mesh, self.rules)
        self.abstract_state = abstract_train_state(abstract_state, self.optimizer, self.shardings)
        self.batch_sharding = shd.batch_sharding(self.mesh, self.rules)
        step_cfg = StepConfig(z_loss=exp.train.z_loss, grad_accum_steps=exp.train.grad_accum_steps,
                              seed=exp.seed, packed=exp.data.packing)
        self.train_step = jax.jit(
            self._with_rules(make_train_step(self.graphdef, self.optimizer, self.schedule, step_cfg)),
            in_shardings=(self.shardings, self.batch_sharding),
            out_shardings=(self.shardings, shd.replicated(self.mesh)), donate_argnums=0)
        self.eval_step = jax.jit(self._with_rules(make_eval_step(self.graphdef, exp.data.packing)),
                                 in_shardings=(self.shardings.params, self.batch_sharding),
                                 out_shardings=shd.replicated(self.mesh))

    def _with_rules(self, fn):
        def traced(*args):
            with axis_rules(self.mesh, self.rules):
                return fn(*args)
        return traced

    def init_state(self) -> TrainState:
        return create_state(self.exp.model, self.optimizer, self.mesh, self.exp.seed, self.rules)[1]

    def evaluate(self, params, batches) -> dict:
        loss_sum = weight_sum = 0.0
        for batch in batches:
            out = self.eval_step(params, to_global(batch, self.batch_sharding))
            loss_sum += float(out["loss_sum"])
            weight_sum += float(out["weight_sum"])
        loss = loss_sum / max(weight_sum, 1.0)
        return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0)),
                "eval/bits_per_token": loss / math.log(2)}

    def sample(self, params, seed: int) -> str:
        train, vocab = self.exp.train, data_lib.vocabulary(self.exp.data)
        prompt = vocab.encode(train.sample_prompt)
        window = min(self.exp.data.seq_len, self.exp.model.max_len)
        tokens = generate(self.graphdef, params, prompt, train.sample_tokens, window,
                          train.sample_temperature, train.sample_top_k, seed)[0]
        return train.sample_prompt + vocab.decode(tokens)


def pretrain(config, workdir: str, devices=None) -> dict:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint. Returns final metrics."""
    trainer = Trainer(config, workdir, devices)
    exp = trainer.exp
    os.makedirs(workdir, exist_ok=True)
    check_workdir(workdir, exp)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), exp.train.keep_checkpoints,
                                exp.train.async_checkpoint)
    train_iter = data_lib.make_train_iterator(exp.data, exp.seed, jax.process_index(),
                                              jax.process_count())
    state = _restore_or_init(trainer, checkpointer, train_iter)
    save_config(workdir, config, exp)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    eval_batches = data_lib.make_eval_batches(exp.data, jax.process_index(), jax.process_count())
    try:
        final = _train_loop(trainer, state, train_iter, eval_batches, checkpointer, writer)
    finally:
        checkpointer.close()
        writer.close()
    return final


def _restore_or_init(trainer: Trainer, checkpointer: Checkpointer, train_iter) -> TrainState:
    step = checkpointer.latest_step()
    if step is None:
        return trainer.init_state()
    state, data_state = checkpointer.restore(step, trainer.abstract_state)
    train_iter.set_state(data_state)
    log.info("resumed from step %d in %s", step, checkpointer.directory)
    return state


def _train_loop(trainer: Trainer, state: TrainState, train_iter, eval_batches, checkpointer,
                writer: MetricsWriter) -> dict:
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
    window_start, window_steps, pending = time.perf_counter(), 0, None
    for step in range(start + 1, cfg.steps + 1):
        state, metrics = trainer.train_step(state, to_global(next(train_iter), trainer.batch_sharding))
        window_steps += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - window_start
            tokens_per_sec = window_steps * tokens_per_step / elapsed
            row = writer.write(step, {**metrics, "train/tokens_per_sec": tokens_per_sec,
                                      "train/mfu": tokens_per_sec * trainer.flops_per_token / peak})
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", tok_s=f"{tokens_per_sec:,.0f}")
            final.update(row)
            window_start, window_steps = time.perf_counter(), 0
        if step % cfg.eval_every == 0 or step == cfg.steps:
            final.update(_eval_and_sample(trainer, state, eval_batches, writer, step, bar))
            window_start, window_steps = time.perf_counter(), 0
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpointer.save(step, state, train_iter.get_state(), force=True)
    bar.close()
    checkpointer.wait()
    final["step"] = int(state.step)
    final["num_params"] = trainer.num_params
    return final


def _eval_and_sample(trainer: Trainer, state, eval_batches, writer, step: int, bar) -> dict:
    scores = trainer.evaluate(state.params, eval_batches)
    writer.write(step, scores)
    bar.write(f"step {step}: eval/loss {scores['eval/loss']:.4f}  "
              f"perplexity {scores['eval/perplexity']:.2f}")
    if trainer.exp.train.sample_tokens and jax.process_index() == 0:
        text = trainer.sample(state.params, seed=step)
        writer.write_text(step, "samples", text)
        with open(os.path.join(trainer.workdir, "samples.txt"), "a") as f:
            f.write(f"=== step {step} ===\n{text}\n\n")
        bar.write(f"--- sample at step {step} ---\n{text}\n---")
    return scores


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None, devices=None) -> dict:
    """Validation loss / perplexity of a checkpoint in ``workdir`` (the latest by default)."""
    trainer = Trainer(config, workdir, devices)
    check_workdir(workdir, trainer.exp)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    step = checkpointer.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first "
                              f"(config.mode='pretrain') or point --workdir at a trained run")
    state, _ = checkpointer.restore(step, trainer.abstract_state)
    checkpointer.close()
    batches = data_lib.make_eval_batches(trainer.exp.data, jax.process_index(), jax.process_count())
    scores = {"step": step, **trainer.evaluate(state.params, batches)}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_step{step}.json"), "w") as f:
            json.dump(scores, f, indent=2)
    return scores
