"""Optimizer presets: ``config.optimizer`` sections."""
from __future__ import annotations

import ml_collections

from lm.train.optimizer import OptimizerConfig


def _optimizer(**fields) -> ml_collections.ConfigDict:
    return OptimizerConfig.defaults(**fields)


def adamw(lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99, weight_decay=0.1):
    """AdamW with linear warmup and cosine decay (the nanoGPT / GPT-3 recipe)."""
    return _optimizer(name="adamw", lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, b2=b2,
                      weight_decay=weight_decay, schedule="cosine", clip_norm=1.0)


def palm_adafactor():
    """PaLM: Adafactor without factorization, lr 1e-2 for 10k steps then 1/sqrt(k), beta1 0.9,
    beta2 = 1 - k^-0.8, global-norm clip 1.0, weight decay lr^2 (1e-4)."""
    return _optimizer(name="adafactor", lr=1e-2, schedule="rsqrt", warmup_steps=10_000, b1=0.9,
                      adafactor_decay=0.8, adafactor_factored=False, clip_norm=1.0,
                      weight_decay=1e-4)
