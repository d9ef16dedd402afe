"""Position encodings: learned and sinusoidal (added to embeddings), RoPE (rotates q/k), ALiBi (bias)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal(positions_bt: jax.Array, d_model: int) -> jax.Array:
    """Vaswani et al. table: sin on even features, cos on odd, timescales up to 10^4. [B, T, D]."""
    half = d_model // 2
    inv_freq = 1.0 / (10_000.0 ** (np.arange(half, dtype=np.float32) * 2.0 / d_model))
    angle_bth = positions_bt[..., None].astype(jnp.float32) * inv_freq
    table = jnp.stack([jnp.sin(angle_bth), jnp.cos(angle_bth)], axis=-1)  # [B, T, half, 2]
    table = table.reshape(*positions_bt.shape, 2 * half)
    if d_model % 2:
        table = jnp.pad(table, [(0, 0)] * (table.ndim - 1) + [(0, 1)])
    return table


def apply_rope(x_bthk: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (Su et al.) in the 'rotate half' layout used by PaLM/LLaMA code."""
    k = x_bthk.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, k, 2, dtype=np.float32) / k))  # [K/2]
    angle_btk = positions_bt[..., None].astype(jnp.float32) * inv_freq       # [B, T, K/2]
    sin, cos = jnp.sin(angle_btk)[:, :, None, :], jnp.cos(angle_btk)[:, :, None, :]
    x32 = x_bthk.astype(jnp.float32)
    x1, x2 = x32[..., : k // 2], x32[..., k // 2:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_bthk.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Press et al.: geometric slopes 2^(-8i/n); for non-powers of two, interleave as the paper does."""
    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]
    if num_heads & (num_heads - 1) == 0:
        return np.asarray(power_of_two(num_heads), np.float32)
    closest = 2 ** int(np.floor(np.log2(num_heads)))
    extra = power_of_two(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(power_of_two(closest) + extra, np.float32)


def alibi_bias(q_positions_bt: jax.Array, k_positions_bs: jax.Array, num_heads: int) -> jax.Array:
    """-slope_h * (i - j) for key j at or before query i. [B, H, T, S]."""
    distance_bts = (q_positions_bt[:, :, None] - k_positions_bs[:, None, :]).astype(jnp.float32)
    slopes = jnp.asarray(alibi_slopes(num_heads))
    return -slopes[None, :, None, None] * jnp.abs(distance_bts)[:, None]
