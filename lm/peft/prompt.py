"""Prompt tuning (Lester et al. 2021): P learned embeddings ``soft_prompt`` [P, D] prepended to
every input at the embedding, the only trained parameters.

The prompt takes positions 0..P-1 and the input's tokens move to P.. (so learned position tables
need max_len >= P + sequence length). Its positions see only the prompt (causally), which makes
its hidden states the same for every row: ``PromptTunedDecoder`` runs the prompt's embeddings
once through the stack, alone, and the keys and values the model computes for them become the
leading slots of its cache (lm.peft.slots), which every row's tokens see at each layer; in a
packed row every document sees them as if the prompt were prepended to it alone. The logits keep
the input's length: none are produced for the prompt's positions.

Initialization (``prompt_init``): 'vocab' copies the embeddings of P random token ids; 'text:<t>'
the embeddings of the text's tokens (repeated to fill P, cut when longer), which makes the soft
prompt start out as that text prepended. Both read the embedding table, so after the base
checkpoint is loaded call ``initialize_soft_prompt`` with the run's tokenizer; ``build`` alone
starts from random vocabulary rows of its own (random) table.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.models.attention import CacheStep, empty_kv_cache
from lm.models.config import ModelConfig
from lm.models.transformer import add_positions
from lm.peft.config import PeftConfig
from lm.peft.slots import LeadingSlotsDecoder


class PromptTunedDecoder(LeadingSlotsDecoder):
    """A decoder whose cache starts with its own keys and values for the ``soft_prompt``."""

    def _leading_count(self) -> int:
        return self.soft_prompt.shape[0]

    def _leading_positions(self, size: int) -> jax.Array:
        return jnp.arange(size, dtype=jnp.int32)

    def _leading_kv(self) -> dict:
        """The soft prompt run alone through the stack (positions 0..P-1, causal, no dropout):
        its keys and values at every layer [L, P, G, K]."""
        cfg, length = self.cfg, self._leading_count()
        positions_1p = jnp.arange(length)[None]
        x_1pd = add_positions(cfg, self.position_embedding,
                              self.soft_prompt[...][None].astype(jnp.dtype(cfg.dtype)), positions_1p, None)
        causal = CacheStep(jnp.int32(0), jnp.tril(jnp.ones((length, length), bool))[None, None],
                           positions_1p)
        cache = empty_kv_cache(1, length, cfg, cfg.num_layers)
        _, cache = self.run_cached(x_1pd, positions_1p, cache, causal)
        return {name: jnp.swapaxes(cache[name][:, 0], 1, 2) for name in ("key", "value")}

    def _token_positions(self, positions, reach: int):
        """Moved past the prompt. ``reach`` (the input's length, or the cache's slots) bounds
        them: a learned position table must hold the prompt and that many more, or it would be
        read past its end."""
        prompt = self._leading_count()
        if self.cfg.positions == "learned" and prompt + reach > self.cfg.max_len:
            raise ValueError(f"config.model.max_len={self.cfg.max_len} cannot hold the soft prompt "
                             f"(config.peft.prompt_length={prompt}) and {reach} positions after it; "
                             f"learned positions need max_len >= {prompt + reach}")
        return positions + prompt


def attach_soft_prompt(model: nnx.Module, cfg: ModelConfig, peft: PeftConfig, rngs: nnx.Rngs) -> None:
    """``model.soft_prompt`` [P, D]: the embeddings of P random token ids of ``model.embed``."""
    ids = jax.random.randint(rngs.params(), (peft.prompt_length,), 0, cfg.vocab_size)
    rows = model.embed.embedding[...][ids].astype(cfg.param_dtype)
    model.soft_prompt = nnx.Param(rows, out_sharding=(None, "embed"), eager_sharding=False)


def prompt_token_ids(model_cfg: ModelConfig, peft: PeftConfig,
                     encode: Optional[Callable[[str], list[int]]] = None, seed: int = 0) -> np.ndarray:
    """The P token ids whose embeddings start the soft prompt (see the module docstring)."""
    length = peft.prompt_length
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


def initialize_soft_prompt(params: dict, model_cfg: ModelConfig, peft: PeftConfig,
                           encode: Optional[Callable[[str], list[int]]] = None, seed: int = 0) -> dict:
    """``params`` (a pure dict) with ``soft_prompt`` set from its own (e.g. freshly loaded
    pretrained) embedding table, as ``peft.prompt_init`` says."""
    if peft.method != "prompt":
        raise ValueError(f"config.peft.method={peft.method!r} has no soft prompt")
    ids = prompt_token_ids(model_cfg, peft, encode, seed)
    table = params["embed"]["embedding"]
    return {**params, "soft_prompt": table[ids].astype(params["soft_prompt"].dtype)}
