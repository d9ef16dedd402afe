"""Multi-head, multi-query or grouped-query attention: self-attention with RoPE or ALiBi when
configured, and cross-attention (encoder-decoder; no position terms). Masks: lm/models/masks.py.

Decoding keeps a key/value cache per layer, ``{"key", "value"}`` arrays [B, G, S, K] over S cache
slots (heads before slots, so that a step reads each head's keys contiguously), stacked over the
layers [L, B, G, S, K]; ``cached`` writes the new keys at ``CacheStep.index`` in place and attends
over every slot the step's mask allows (lm/infer/decode.py builds the masks). A cache may start
with slots that hold no token of the row (learned ones, say): the step's mask and key positions
say who sees them, nothing else here knows."""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from flax import nnx

from lm.models import positions as pos
from lm.models.config import ModelConfig
from lm.models.layers import Dense, dropout, fold
from lm.models.masks import attention_mask
from lm.parallel.axes import constrain

_Q_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
_KV_AXES = ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv")
# A layer's cache: batch and kv heads sharded like the activations, the slots kept whole.
KV_CACHE_AXES = ("activation_batch", "activation_kv_heads", None, "activation_kv")


class CacheStep(NamedTuple):
    """Where a cached call writes and what it sees: T new tokens go to slots index..index+T-1;
    query t sees slot s where ``mask_b1ts`` is true; ``key_positions_bs`` are the positions of
    the slots' tokens (for ALiBi)."""
    index: jax.Array
    mask_b1ts: jax.Array
    key_positions_bs: jax.Array


def empty_kv_cache(batch: int, length: int, cfg: ModelConfig, layers: int) -> dict:
    """Zero keys and values [layers, B, G, S, K] in the compute dtype."""
    shape = (layers, batch, cfg.kv_heads, length, cfg.dim_per_head)
    zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
    return {"key": constrain(zeros, ("layers", *KV_CACHE_AXES)),
            "value": constrain(zeros, ("layers", *KV_CACHE_AXES))}


def exact_attention(q_bthk, k_bsgk, v_bsgk, bias_bhts, mask_b1ts, scale, kv_layout: str = "bsgk"):
    """Reference softmax attention in float32 (the fallback and the test oracle). Keys and values
    are [B, S, G, K], or [B, G, S, K] with ``kv_layout='bgsk'`` (the decoding cache)."""
    b, t, h, k = q_bthk.shape
    g = k_bsgk.shape[kv_layout.index("g")]
    q_btgrk = q_bthk.reshape(b, t, g, h // g, k).astype(jnp.float32)
    logits = jnp.einsum(f"btgrk,{kv_layout}->bgrts", q_btgrk, k_bsgk.astype(jnp.float32)) * scale
    logits = logits.reshape(b, h, t, -1)
    if bias_bhts is not None:
        logits = logits + bias_bhts
    causal_ts = jnp.tril(jnp.ones((t, logits.shape[-1]), dtype=bool))
    keep = causal_ts[None, None] if mask_b1ts is None else mask_b1ts
    logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).reshape(b, g, h // g, t, -1)
    out = jnp.einsum(f"bgrts,{kv_layout}->btgrk", probs, v_bsgk.astype(jnp.float32))
    return out.reshape(b, t, h, k).astype(q_bthk.dtype)


def _use_exact(choice: str) -> bool:
    # XLA's CPU lowering of jax.nn.dot_product_attention is ~10% slower per train step than the
    # plain einsum form; accelerators get the fused kernel.
    return choice == "exact" or (choice == "auto" and jax.default_backend() == "cpu")


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5 if cfg.scale_residual_init else None
        self.cfg = cfg
        self.query = Dense((d,), (h, k), ("embed",), ("heads", "kv"), cfg=cfg, rngs=rngs)
        self.key = Dense((d,), (g, k), ("embed",), ("kv_heads", "kv"), cfg=cfg, rngs=rngs)
        self.value = Dense((d,), (g, k), ("embed",), ("kv_heads", "kv"), cfg=cfg, rngs=rngs)
        self.out = Dense((h, k), (d,), ("heads", "kv"), ("embed",), cfg=cfg, rngs=rngs, std=out_std)

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array,
                 segment_ids_bt: Optional[jax.Array] = None,
                 rng: Optional[jax.Array] = None,
                 bidirectional_bt: Optional[jax.Array] = None,
                 mask: Optional[jax.Array] = None) -> jax.Array:
        """Self-attention; ``mask`` [B, 1, T, T], when given, replaces the one built from
        segments and prefix (an encoder passes its bidirectional mask)."""
        cfg = self.cfg
        q_bthk, k_bsgk, v_bsgk = self._self_projections(x_btd, positions_bt, rng)
        bias = (pos.alibi_bias(positions_bt, positions_bt, cfg.num_heads).astype(q_bthk.dtype)
                if cfg.positions == "alibi" else None)
        if mask is None:
            mask = attention_mask(segment_ids_bt, x_btd.shape[1], bidirectional_bt)
        return self._attend(q_bthk, k_bsgk, v_bsgk, bias, mask, rng)

    def _self_projections(self, x_btd, positions_bt, rng=None):
        """Queries, keys and values of ``x_btd``, rotated by RoPE when configured. Streams 1-3
        of ``rng`` are the projections' own (see Dense)."""
        q_bthk = constrain(self.query(x_btd, fold(rng, 1)), _Q_AXES)
        k_btgk = constrain(self.key(x_btd, fold(rng, 2)), _KV_AXES)
        v_btgk = constrain(self.value(x_btd, fold(rng, 3)), _KV_AXES)
        if self.cfg.positions == "rope":
            q_bthk = pos.apply_rope(q_bthk, positions_bt, self.cfg.rope_theta)
            k_btgk = pos.apply_rope(k_btgk, positions_bt, self.cfg.rope_theta)
        return q_bthk, k_btgk, v_btgk

    def cached(self, x_btd: jax.Array, positions_bt: jax.Array, kv: dict, step: CacheStep,
               layer, rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
        """Self-attention of T new tokens over layer ``layer`` of the stack's cache
        ``{"key", "value"}`` [L, B, G, S, K], which gets their keys and values at slot
        ``step.index`` (written in place). Returns the output and the updated cache. ``rng``
        (dropout, as in ``__call__``) is for a training forward that runs through a cache."""
        cfg = self.cfg
        q_bthk, k_btgk, v_btgk = self._self_projections(x_btd, positions_bt, rng)
        start = tuple(jnp.asarray(i, jnp.int32) for i in (layer, 0, 0, step.index, 0))
        kv = {name: constrain(jax.lax.dynamic_update_slice(
                  kv[name], jnp.swapaxes(new, 1, 2)[None].astype(kv[name].dtype), start),
                  ("layers", *KV_CACHE_AXES))
              for name, new in (("key", k_btgk), ("value", v_btgk))}
        k_bgsk, v_bgsk = (jax.lax.dynamic_index_in_dim(kv[name], layer, 0, keepdims=False)
                          for name in ("key", "value"))
        bias = (pos.alibi_bias(positions_bt, step.key_positions_bs, cfg.num_heads).astype(q_bthk.dtype)
                if cfg.positions == "alibi" else None)
        mask = step.mask_b1ts
        if not _use_exact(cfg.attention):
            return self._attend(q_bthk, jnp.swapaxes(k_bgsk, 1, 2), jnp.swapaxes(v_bgsk, 1, 2),
                                bias, mask, rng), kv
        out_bthk = exact_attention(q_bthk, k_bgsk, v_bgsk, bias, mask,
                                   cfg.dim_per_head ** -0.5, kv_layout="bgsk")
        return self._project_out(out_bthk, rng), kv

    def memory_kv(self, memory_bsd: jax.Array) -> dict:
        """Cross-attention keys and values of the encoder output, computed once per decode."""
        return {"key": constrain(self.key(memory_bsd), _KV_AXES),
                "value": constrain(self.value(memory_bsd), _KV_AXES)}

    def cross(self, x_btd: jax.Array, memory_bsd: jax.Array, mask: jax.Array,
              rng: Optional[jax.Array] = None) -> jax.Array:
        """Queries from ``x_btd``, keys and values from the encoder output ``memory_bsd``."""
        return self.cross_cached(x_btd, self.memory_kv(memory_bsd), mask, rng)

    def cross_cached(self, x_btd: jax.Array, memory_kv: dict, mask: jax.Array,
                     rng: Optional[jax.Array] = None) -> jax.Array:
        """Cross-attention over keys and values from ``memory_kv``."""
        q_bthk = constrain(self.query(x_btd), _Q_AXES)
        return self._attend(q_bthk, memory_kv["key"], memory_kv["value"], None, mask, rng)

    def _attend(self, q_bthk, k_bsgk, v_bsgk, bias, mask, rng):
        cfg = self.cfg
        scale = cfg.dim_per_head ** -0.5
        if _use_exact(cfg.attention):
            out_bthk = exact_attention(q_bthk, k_bsgk, v_bsgk, bias, mask, scale)
        else:
            out_bthk = jax.nn.dot_product_attention(q_bthk, k_bsgk, v_bsgk, bias=bias, mask=mask,
                                                    scale=scale, is_causal=mask is None)
        return self._project_out(out_bthk, rng)

    def _project_out(self, out_bthk, rng):
        out_bthk = constrain(out_bthk, _Q_AXES)
        return dropout(self.out(out_bthk, fold(rng, 4)), self.cfg.dropout, rng)
