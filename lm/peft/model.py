"""Attaching a PEFT method's parameters to a freshly built model (called by lm.models.build)."""
from __future__ import annotations

import jax
from flax import nnx

from lm.models.config import ModelConfig
from lm.peft.adapters import attach_adapters
from lm.peft.lora import attach_lora
from lm.peft.prefix import attach_prefix
from lm.peft.prompt import attach_soft_prompt

ATTACH = {"lora": attach_lora, "adapter": attach_adapters, "prefix": attach_prefix,
          "prompt": attach_soft_prompt}
# The PEFT parameters draw from fold_in(key(seed), PEFT_STREAM), not from the base parameters'
# stream, so adding a method leaves the base parameters of a given seed as they were.
PEFT_STREAM = 0x9EF7


def add_peft_parameters(model: nnx.Module, cfg: ModelConfig, seed: int) -> None:
    """Adds the parameters of ``cfg.peft.method`` to ``model`` (a Decoder) in place."""
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), PEFT_STREAM))
    ATTACH[cfg.peft.method](model, cfg, rngs)
