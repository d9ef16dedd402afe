"""Multi-head, multi-query or grouped-query attention: self-attention with RoPE or ALiBi when
configured, and cross-attention (encoder-decoder; no position terms). Masks: lm/models/masks.py."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from flax import nnx

from lm.models import positions as pos
from lm.models.config import ModelConfig
from lm.models.layers import Dense, dropout
from lm.models.masks import attention_mask
from lm.parallel.axes import constrain

_Q_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
_KV_AXES = ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv")


def exact_attention(q_bthk, k_bsgk, v_bsgk, bias_bhts, mask_b1ts, scale):
    """Reference softmax attention in float32 (the fallback and the test oracle)."""
    b, t, h, k = q_bthk.shape
    g = k_bsgk.shape[2]
    q_btgrk = q_bthk.reshape(b, t, g, h // g, k).astype(jnp.float32)
    logits = jnp.einsum("btgrk,bsgk->bgrts", q_btgrk, k_bsgk.astype(jnp.float32)) * scale
    logits = logits.reshape(b, h, t, -1)
    if bias_bhts is not None:
        logits = logits + bias_bhts
    causal_ts = jnp.tril(jnp.ones((t, logits.shape[-1]), dtype=bool))
    keep = causal_ts[None, None] if mask_b1ts is None else mask_b1ts
    logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).reshape(b, g, h // g, t, -1)
    out = jnp.einsum("bgrts,bsgk->btgrk", probs, v_bsgk.astype(jnp.float32))
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
        q_bthk = constrain(self.query(x_btd), _Q_AXES)
        k_bsgk = constrain(self.key(x_btd), _KV_AXES)
        v_bsgk = constrain(self.value(x_btd), _KV_AXES)
        if cfg.positions == "rope":
            q_bthk = pos.apply_rope(q_bthk, positions_bt, cfg.rope_theta)
            k_bsgk = pos.apply_rope(k_bsgk, positions_bt, cfg.rope_theta)
        bias = (pos.alibi_bias(positions_bt, positions_bt, cfg.num_heads).astype(q_bthk.dtype)
                if cfg.positions == "alibi" else None)
        if mask is None:
            mask = attention_mask(segment_ids_bt, x_btd.shape[1], bidirectional_bt)
        return self._attend(q_bthk, k_bsgk, v_bsgk, bias, mask, rng)

    def cross(self, x_btd: jax.Array, memory_bsd: jax.Array, mask: jax.Array,
              rng: Optional[jax.Array] = None) -> jax.Array:
        """Queries from ``x_btd``, keys and values from the encoder output ``memory_bsd``."""
        q_bthk = constrain(self.query(x_btd), _Q_AXES)
        k_bsgk = constrain(self.key(memory_bsd), _KV_AXES)
        v_bsgk = constrain(self.value(memory_bsd), _KV_AXES)
        return self._attend(q_bthk, k_bsgk, v_bsgk, None, mask, rng)

    def _attend(self, q_bthk, k_bsgk, v_bsgk, bias, mask, rng):
        cfg = self.cfg
        scale = cfg.dim_per_head ** -0.5
        if _use_exact(cfg.attention):
            out_bthk = exact_attention(q_bthk, k_bsgk, v_bsgk, bias, mask, scale)
        else:
            out_bthk = jax.nn.dot_product_attention(q_bthk, k_bsgk, v_bsgk, bias=bias, mask=mask,
                                                    scale=scale, is_causal=mask is None)
        out_bthk = constrain(out_bthk, _Q_AXES)
        return dropout(self.out(out_bthk), cfg.dropout, rng)
