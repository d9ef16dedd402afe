"""Optimizers (AdamW, Adafactor), learning-rate schedules, clipping and the weight-decay mask."""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax

from lm.configlib import Section, at_least, fraction, one_of, option, positive


NAMES = ("adamw", "adafactor")
SCHEDULES = ("cosine", "rsqrt", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
    where = "config.optimizer"
    name: str = option("adamw", "the optimizer", one_of(*NAMES))
    lr: float = option(1e-3, "peak learning rate", positive())
    schedule: str = option("cosine", "cosine (warm-up, then cosine to min_lr) | rsqrt | constant",
                           one_of(*SCHEDULES))
    warmup_steps: int = option(100, "linear warm-up steps", at_least(0))
    decay_steps: int = option(0, "length of the decay", at_least(0, "0: the run's train.steps"))
    min_lr: float = option(1e-4, "cosine: final learning rate", at_least(0))
    b1: float = option(0.9, "first-moment decay (Adafactor: momentum)",
                       fraction(low_open=False))
    b2: float = option(0.99, "adamw: second-moment decay", fraction(low_open=False))
    eps: float = option(1e-8, "adamw: added to the second moment's root", at_least(0))
    weight_decay: float = option(0.1, "decoupled (AdamW), on matrices only (see decay_mask)",
                                 at_least(0))
    clip_norm: float = option(1.0, "global-norm clipping", at_least(0, "0: off"))
    adafactor_decay: float = option(0.8, "adafactor: beta2 = 1 - step^-decay (PaLM)", positive())
    adafactor_factored: bool = option(False, "adafactor: factored second moments (PaLM: off)")


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``lr`` then cosine to ``min_lr`` / 1/sqrt decay / constant."""
    warmup = max(cfg.warmup_steps, 0)
    decay_steps = cfg.decay_steps or total_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = cfg.lr * (step + 1) / (warmup + 1) if warmup else cfg.lr
        if cfg.schedule == "cosine":
            progress = jnp.clip((step - warmup) / max(decay_steps - warmup, 1), 0.0, 1.0)
            after = cfg.min_lr + 0.5 * (1 + jnp.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
        elif cfg.schedule == "rsqrt":
            after = cfg.lr * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1)))
        else:
            after = jnp.asarray(cfg.lr, jnp.float32)
        return jnp.where(step < warmup, warm, after)
    return schedule


STACKED_BLOCKS = ("blocks", "encoder_blocks", "decoder_blocks")


def decay_mask(params, block_stack_axes: int = 0):
    """Weight decay on matrices and embeddings, not on norms' scales or biases: on parameters
    with two or more axes of their own. The ``block_stack_axes`` leading axes that stack a
    model's blocks (lm.models.transformer.block_stack_axes: 1 with scan_layers, 2 or 3 when
    pipelined) do not count, so every form of a model decays the same weights."""
    def decays(path, p):
        stacked = bool(path) and getattr(path[0], "key", None) in STACKED_BLOCKS
        return p.ndim - (block_stack_axes if stacked else 0) >= 2
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int,
                   block_stack_axes: int = 0) -> optax.GradientTransformation:
    """``block_stack_axes``: see ``decay_mask``."""
    schedule = make_schedule(cfg, total_steps)
    weight_decay_mask = functools.partial(decay_mask, block_stack_axes=block_stack_axes)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=weight_decay_mask)
    else:
        core = optax.adafactor(schedule, decay_rate=cfg.adafactor_decay, momentum=cfg.b1,
                               factored=cfg.adafactor_factored, multiply_by_parameter_scale=False,
                               clipping_threshold=None, weight_decay_rate=cfg.weight_decay or None,
                               weight_decay_mask=weight_decay_mask)
    if cfg.clip_norm:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)
    return core
