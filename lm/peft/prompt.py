"""Prompt tuning (Lester et al. 2021): P learned embeddings ``soft_prompt`` [P, D] prepended to
every input, the only trained parameters.

The prompt takes positions 0..P-1 and the input's tokens move to P.. (so learned position tables
need max_len >= P + sequence length). Its positions see only the prompt (causally), which makes
its hidden states the same for every row: the model runs it once through the stack and every
row's tokens attend to its keys and values at each layer (lm.models.transformer), in a packed row
every document as if the prompt were prepended to it alone. The logits keep the input's length:
none are produced for the prompt's positions.

Initialization (``prompt_init``): 'vocab' copies the embeddings of P random token ids; 'text:<t>'
the embeddings of the text's tokens (repeated to fill P, cut when longer), which makes the soft
prompt start out as that text prepended. Both read the embedding table, so after the base
checkpoint is loaded call ``initialize_soft_prompt`` with the run's tokenizer; ``build`` alone
starts from random vocabulary rows of its own (random) table.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from flax import nnx

from lm.models.config import ModelConfig


def attach_soft_prompt(model: nnx.Module, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
    """``model.soft_prompt`` [P, D]: the embeddings of P random token ids of ``model.embed``."""
    ids = jax.random.randint(rngs.params(), (cfg.peft.prompt_length,), 0, cfg.vocab_size)
    rows = model.embed.embedding[...][ids].astype(cfg.param_dtype)
    model.soft_prompt = nnx.Param(rows, out_sharding=(None, "embed"), eager_sharding=False)


def prompt_token_ids(model_cfg: ModelConfig, encode: Optional[Callable[[str], list[int]]] = None,
                     seed: int = 0) -> np.ndarray:
    """The P token ids whose embeddings start the soft prompt (see the module docstring)."""
    peft, length = model_cfg.peft, model_cfg.peft.prompt_length
    if not peft.prompt_text:
        return np.random.RandomState(seed).randint(0, model_cfg.vocab_size, length)
    if encode is None:
        raise ValueError(f"config.peft.prompt_init={peft.prompt_init!r} needs the run's tokenizer: "
                         f"pass its encode function")
    ids = list(encode(peft.prompt_text))
    if not ids:
        raise ValueError(f"config.peft.prompt_init={peft.prompt_init!r} encodes to no tokens")
    bad = [i for i in ids if not 0 <= i < model_cfg.vocab_size]
    if bad:
        raise ValueError(f"config.peft.prompt_init text encodes to ids outside the vocabulary of "
                         f"{model_cfg.vocab_size}: {bad[:5]}")
    return np.resize(np.asarray(ids, np.int64), length)


def initialize_soft_prompt(params: dict, model_cfg: ModelConfig,
                           encode: Optional[Callable[[str], list[int]]] = None, seed: int = 0) -> dict:
    """``params`` (a pure dict) with ``soft_prompt`` set from its own (e.g. freshly loaded
    pretrained) embedding table, as ``model_cfg.peft.prompt_init`` says."""
    if model_cfg.peft.method != "prompt":
        raise ValueError(f"config.peft.method={model_cfg.peft.method!r} has no soft prompt")
    ids = prompt_token_ids(model_cfg, encode, seed)
    table = params["embed"]["embedding"]
    return {**params, "soft_prompt": table[ids].astype(params["soft_prompt"].dtype)}
