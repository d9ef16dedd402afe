"""Bottleneck adapters (Houlsby et al. 2019): after the attention and after the MLP of every
block, the sublayer's output y becomes y + up(gelu(down(y))) before the residual add. They are
attached by swapping each sublayer's output projection (``attention.out``, ``mlp.wo``) for an
``AdaptedDense`` that runs the projection, then the adapter (before the sublayer's dropout).

``down`` [D, A] starts like the model's other weights (normal, init_std), ``up`` [A, D] and both
biases at zero, so a new adapter is the identity and a new adapter model computes exactly what
its base model computes. Parameters: ``<block>/attention/out/adapter/{down,down_bias,up,up_bias}``
and the same under ``<block>/mlp/wo/adapter`` (adapter files of version 1 named them
``<block>/adapter_attention`` and ``<block>/adapter_mlp``; lm.peft.params reads those). D is
named 'embed' (sharded like the residual stream's weights), the bottleneck axis is unnamed
(replicated).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lm.models.config import ModelConfig
from lm.models.layers import Dense, matmul_2d
from lm.peft.config import PeftConfig
from lm.peft.stacking import NO_LEAD, Lead, leading_axes, stacked_param


class Adapter(nnx.Module):
    def __init__(self, cfg: ModelConfig, peft: PeftConfig, rngs: nnx.Rngs, lead: Lead = NO_LEAD):
        d, a = cfg.d_model, peft.adapter_dim
        zeros, dtype = jax.nn.initializers.zeros, cfg.param_dtype
        self.dtype = jnp.dtype(cfg.dtype)
        self.down = stacked_param(rngs, jax.nn.initializers.normal(cfg.init_std), lead, (d, a),
                                  ("embed", None), dtype)
        self.down_bias = stacked_param(rngs, zeros, lead, (a,), (None,), dtype)
        self.up = stacked_param(rngs, zeros, lead, (a, d), (None, "embed"), dtype)
        self.up_bias = stacked_param(rngs, zeros, lead, (d,), ("embed",), dtype)

    def __call__(self, y_btd: jax.Array) -> jax.Array:
        def dense(x, kernel, bias):
            return matmul_2d(x, kernel[...].astype(self.dtype), 1) + bias[...].astype(self.dtype)
        h_na = jax.nn.gelu(dense(y_btd, self.down, self.down_bias), approximate=False)
        return y_btd + dense(h_na, self.up, self.up_bias).reshape(y_btd.shape)


class AdaptedDense(Dense):
    """A sublayer's output projection followed by its adapter: ``y + adapter(y)`` for
    ``y = dense(x)``. It stands in for ``dense`` in its parent and owns the same kernel and bias
    variables, so the base parameters keep their paths."""

    def __init__(self, dense: Dense, adapter: Adapter):
        self.in_shape, self.out_shape, self.dtype = dense.in_shape, dense.out_shape, dense.dtype
        self.kernel, self.bias = dense.kernel, dense.bias
        self.adapter = adapter

    def __call__(self, x: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
        return self.adapter(super().__call__(x, rng))


def attach_adapters(model: nnx.Module, cfg: ModelConfig, peft: PeftConfig, rngs: nnx.Rngs) -> None:
    """An adapter after the attention and one after the MLP of every block of ``model.blocks``
    (a list of blocks, or one block whose parameters are stacked over the layers): each
    sublayer's output projection (``attention.out``, ``mlp.wo``) is swapped for an
    ``AdaptedDense``."""
    blocks = model.blocks if isinstance(model.blocks, nnx.List) else [model.blocks]
    for block in blocks:
        lead = leading_axes(block.attn_norm.scale, 1)  # [*lead, D]
        block.attention.out = AdaptedDense(block.attention.out, Adapter(cfg, peft, rngs, lead))
        block.mlp.wo = AdaptedDense(block.mlp.wo, Adapter(cfg, peft, rngs, lead))
