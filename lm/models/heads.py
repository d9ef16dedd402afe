"""Scalar heads on a decoder's final hidden states: a reward model's score, a PPO value.

A head is attached to a built decoder from outside, as a PEFT method's parameters are, under the
name ``<name>_head``; its parameters are a vector over ``embed`` (sharded like the embedding's
model axis) and a bias. Heads start at zero: a fresh reward model scores every response 0 (its
Bradley-Terry loss is ln 2), a fresh value head predicts 0. Their parameters draw from their own
random stream, so attaching a head leaves the decoder's parameters of a seed as they were.

    attach_heads(model, cfg, ("score",))
    logits_btv, heads = apply_heads(model, batch, ("score",))   # heads["score"]: [B, T]
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lm.models.config import ModelConfig
from lm.models.layers import param

HEAD_NAMES = ("score", "value")
HEAD_STREAM = 0x4EAD  # fold_in(key(seed), HEAD_STREAM): the heads' own random stream


class ScalarHead(nnx.Module):
    """One number per position: ``hidden @ kernel + bias`` in float32."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        zeros = jax.nn.initializers.zeros
        self.kernel = param(rngs, zeros, (cfg.d_model,), ("embed",), jnp.float32)
        self.bias = param(rngs, zeros, (), (), jnp.float32)

    def __call__(self, hidden_btd: jax.Array) -> jax.Array:
        return hidden_btd.astype(jnp.float32) @ self.kernel[...] + self.bias[...]


def attribute(name: str) -> str:
    return f"{name}_head"


def check_heads(heads: Sequence[str]) -> None:
    unknown = [h for h in heads if h not in HEAD_NAMES]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; heads are {', '.join(HEAD_NAMES)}")


def attach_heads(model: nnx.Module, cfg: ModelConfig, heads: Sequence[str], seed: int = 0) -> None:
    """Adds a ``ScalarHead`` per name of ``heads`` to ``model`` (a causal decoder) in place."""
    check_heads(heads)
    if heads and cfg.arch != "decoder":
        raise ValueError(f"a {'/'.join(heads)} head needs config.model.arch='decoder', not {cfg.arch!r}")
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), HEAD_STREAM))
    for name in heads:
        setattr(model, attribute(name), ScalarHead(cfg, rngs))


def apply_heads(model, batch: dict, heads: Sequence[str], packed: bool = False,
                dropout_rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(logits [B, T, V], {head name: per-position values [B, T]}) from one forward pass."""
    logits_btv, hidden_btd = model.forward_features(batch, packed, dropout_rng)
    return logits_btv, {name: getattr(model, attribute(name))(hidden_btd) for name in heads}


def last_response_index(weights_bt: jax.Array) -> jax.Array:
    """[B] the last position whose target is weighted (a response's EOS): the position whose
    hidden state has read the whole response, where a sequence's score is taken (0 for a row
    without weights)."""
    positions_bt = jnp.arange(weights_bt.shape[1])[None, :]
    return jnp.max(jnp.where(weights_bt > 0, positions_bt, 0), axis=1)


def at_index(values_bt: jax.Array, index_b: jax.Array) -> jax.Array:
    return jnp.take_along_axis(values_bt, index_b[:, None], axis=1)[:, 0]
