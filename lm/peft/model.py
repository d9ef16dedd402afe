"""Building a model with a PEFT method: the base model of ``lm.models.build``, then the method's
parameters attached to it from outside (lm.models knows nothing of them)."""
from __future__ import annotations

import jax
from flax import nnx

from lm import models
from lm.models.config import ModelConfig
from lm.peft.adapters import attach_adapters
from lm.peft.config import PeftConfig
from lm.peft.lora import attach_lora
from lm.peft.prefix import PrefixTunedDecoder, attach_prefix
from lm.peft.prompt import PromptTunedDecoder, attach_soft_prompt

ATTACH = {"lora": attach_lora, "adapter": attach_adapters, "prefix": attach_prefix,
          "prompt": attach_soft_prompt}
# The PEFT parameters draw from fold_in(key(seed), PEFT_STREAM), not from the base parameters'
# stream, so adding a method leaves the base parameters of a given seed as they were.
PEFT_STREAM = 0x9EF7
# Methods whose slots live in the cache: the base Decoder, built the same way, as a subclass
# that knows where the slots go (lm.peft.slots).
DECODERS = {"prefix": PrefixTunedDecoder, "prompt": PromptTunedDecoder}
NO_PEFT = PeftConfig()


def build(model_cfg: ModelConfig, peft: PeftConfig = NO_PEFT, seed: int = 0) -> nnx.Module:
    """The model of ``model_cfg`` initialised from ``seed`` with ``peft``'s parameters attached:
    its base parameters are those of ``lm.models.build(model_cfg, seed)``."""
    peft.check_model(model_cfg)
    if peft.method in DECODERS:
        if model_cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set before building the model")
        # lm.models.build's construction with the subclass: the same base parameters.
        model = DECODERS[peft.method](model_cfg, nnx.Rngs(params=seed))
    else:
        model = models.build(model_cfg, seed)
    if peft.adds_parameters:
        add_peft_parameters(model, model_cfg, peft, seed)
    return model


def add_peft_parameters(model: nnx.Module, model_cfg: ModelConfig, peft: PeftConfig, seed: int) -> None:
    """Adds the parameters of ``peft.method`` to ``model`` (a Decoder) in place."""
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), PEFT_STREAM))
    ATTACH[peft.method](model, model_cfg, peft, rngs)
