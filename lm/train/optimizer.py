"""Optimizers (AdamW, Adafactor), learning-rate schedules, clipping and the weight-decay mask."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from lm.configlib import ConfigError, from_section


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"          # adamw | adafactor
    lr: float = 1e-3             # peak learning rate
    schedule: str = "cosine"     # cosine (warmup, then cosine to min_lr) | rsqrt | constant
    warmup_steps: int = 100
    decay_steps: int = 0         # 0: the run's train.steps
    min_lr: float = 1e-4         # cosine: final learning rate
    b1: float = 0.9
    b2: float = 0.99             # adamw second-moment decay
    eps: float = 1e-8
    weight_decay: float = 0.1    # decoupled (AdamW), applied to matrices only (see decay_mask)
    clip_norm: float = 1.0       # global-norm clipping; 0 disables
    adafactor_decay: float = 0.8  # adafactor: beta2 = 1 - step^-decay (PaLM)
    adafactor_factored: bool = False  # PaLM: unfactored second moments

    @classmethod
    def from_config(cls, section) -> "OptimizerConfig":
        cfg = from_section(cls, section, "config.optimizer")
        if cfg.name not in ("adamw", "adafactor"):
            raise ConfigError(f"config.optimizer.name={cfg.name!r}: use 'adamw' or 'adafactor'")
        if cfg.schedule not in ("cosine", "rsqrt", "constant"):
            raise ConfigError(f"config.optimizer.schedule={cfg.schedule!r}: use cosine, rsqrt or constant")
        if cfg.lr <= 0:
            raise ConfigError(f"config.optimizer.lr must be positive, got {cfg.lr}")
        return cfg


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


def decay_mask(params):
    """Weight decay on matrices and embeddings (ndim >= 2), not on norms' scales or biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask)
    else:
        core = optax.adafactor(schedule, decay_rate=cfg.adafactor_decay, momentum=cfg.b1,
                               factored=cfg.adafactor_factored, multiply_by_parameter_scale=False,
                               clipping_threshold=None, weight_decay_rate=cfg.weight_decay or None,
                               weight_decay_mask=decay_mask)
    if cfg.clip_norm:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)
    return core
