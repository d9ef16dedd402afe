"""Basic layers with logical axis names on every parameter: dense, embedding, norms, MLP."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lm.models.config import ModelConfig
from lm.parallel.axes import constrain


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[Optional[str]],
          dtype) -> nnx.Param:
    """A parameter whose metadata names its axes (resolved to mesh axes by lm.parallel).

    Draws exactly one key from ``rngs.params``, even for constant initialisers: stacked layers
    count their parameters to know where each layer's keys start (``keys_drawn``)."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and axes {tuple(axes)} differ in length")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype),
                     out_sharding=tuple(axes), eager_sharding=False)


def keys_drawn(make_module: Callable[[nnx.Rngs], nnx.Module]) -> int:
    """Keys that ``make_module(rngs)`` draws from ``rngs.params``: one per parameter (see
    ``param``), counted on the abstract module, so nothing is allocated."""
    abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(params=0)))
    return len(jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def layer_rngs(rngs: nnx.Rngs, layers: int, keys_per_layer: int) -> nnx.Rngs:
    """Parameter streams for ``layers`` layers built at once (under ``nnx.vmap``), stacked
    [layers]: layer l's stream starts where building layers 0 .. l-1 one after another leaves
    ``rngs.params``, so every layer draws the keys it would get in a list of layers. Moves
    ``rngs.params`` past all the layers, as building them in turn would."""
    stream = rngs.params
    start = stream.count[...]
    stacked = nnx.Rngs(params=jnp.broadcast_to(stream.key[...], (layers, *stream.key.shape)))
    stacked.params.count[...] = start + keys_per_layer * jnp.arange(layers, dtype=start.dtype)
    stream.count[...] = start + keys_per_layer * layers
    return stacked


def fold(rng: Optional[jax.Array], i: int) -> Optional[jax.Array]:
    """An independent stream ``i`` of ``rng`` (None stays None: no dropout)."""
    return None if rng is None else jax.random.fold_in(rng, i)


def dropout(x: jax.Array, rate: float, rng: Optional[jax.Array]) -> jax.Array:
    """Inverted dropout; a no-op without an rng (evaluation) or at rate 0."""
    if rate == 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Dense(nnx.Module):
    """y = x @ W (+ b) contracting the last ``len(in_shape)`` axes of x.

    ``in_shape``/``out_shape`` may be multi-dimensional (e.g. out (heads, head_dim)) so that
    parameters keep per-head axes that the rules table can shard. ``rng`` draws nothing here: it
    is the call's own random stream, for a module that stands in for this layer and adds a
    random branch (dropout on a low-rank update, say), so its draws do not depend on where the
    layer sits.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
                 in_axes: Sequence[str], out_axes: Sequence[str], *, cfg: ModelConfig,
                 rngs: nnx.Rngs, std: Optional[float] = None):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.dtype = jnp.dtype(cfg.dtype)
        init = jax.nn.initializers.normal(cfg.init_std if std is None else std)
        self.kernel = param(rngs, init, self.in_shape + self.out_shape,
                            tuple(in_axes) + tuple(out_axes), cfg.param_dtype)
        self.bias = (param(rngs, jax.nn.initializers.zeros, self.out_shape, out_axes,
                           cfg.param_dtype) if cfg.use_bias else None)

    def __call__(self, x: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
        n_in = len(self.in_shape)
        batch_shape = x.shape[: x.ndim - n_in]
        x = x.astype(self.dtype)
        y = matmul_2d(x, self.kernel[...].astype(self.dtype), n_in)
        y = y.reshape(*batch_shape, *self.out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def matmul_2d(x: jax.Array, kernel: jax.Array, n_contract: int) -> jax.Array:
    """x [..., *in] @ kernel [*in, *out] as one 2-D matmul [N, K] @ [K, M] -> [N, M].

    Flattening first matters on CPU: XLA's backward of a 3-D dot_general materialises a strided
    transpose of the activation gradient fused with the elementwise work, which made the whole
    backward pass about 2x slower than the same matmuls written in 2-D (docs/results/cpu_speed.md).
    """
    k = math.prod(kernel.shape[:n_contract])
    x_nk = x.reshape(-1, k)
    return x_nk @ kernel.reshape(k, -1)


class Embed(nnx.Module):
    """Token embedding [vocab, embed]; ``attend`` gives logits with the tied table."""

    def __init__(self, vocab_size: int, cfg: ModelConfig, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(cfg.dtype)
        self.embedding = param(rngs, jax.nn.initializers.normal(cfg.init_std),
                               (vocab_size, cfg.d_model), ("vocab", "embed"), cfg.param_dtype)

    def __call__(self, tokens_bt: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens_bt, axis=0).astype(self.dtype)

    def attend(self, x_btd: jax.Array) -> jax.Array:
        table_vd = self.embedding[...].astype(self.dtype)
        logits_nv = x_btd.reshape(-1, x_btd.shape[-1]) @ table_vd.T  # 2-D: see matmul_2d
        return logits_nv.reshape(*x_btd.shape[:-1], table_vd.shape[0])


class Norm(nnx.Module):
    """LayerNorm (scale, optional bias) or RMSNorm (scale only); statistics in float32."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.kind, self.eps, self.dtype = cfg.norm, cfg.norm_eps, jnp.dtype(cfg.dtype)
        self.scale = param(rngs, jax.nn.initializers.ones, (cfg.d_model,), ("norm",), cfg.param_dtype)
        self.bias = (param(rngs, jax.nn.initializers.zeros, (cfg.d_model,), ("norm",),
                           cfg.param_dtype) if cfg.use_bias and cfg.norm == "layernorm" else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


_ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu,
                "swiglu": jax.nn.silu, "geglu": lambda x: jax.nn.gelu(x, approximate=False)}


class MLP(nnx.Module):
    """Feed-forward block: act(x W_in) W_out, or (act(x W_gate) * x W_up) W_out when gated."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.ff_dim
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5 if cfg.scale_residual_init else None
        self.activation, self.gated, self.rate = _ACTIVATIONS[cfg.mlp], cfg.gated_mlp, cfg.dropout
        self.wi = Dense((d,), (f,), ("embed",), ("mlp",), cfg=cfg, rngs=rngs)
        self.wi_up = Dense((d,), (f,), ("embed",), ("mlp",), cfg=cfg, rngs=rngs) if self.gated else None
        self.wo = Dense((f,), (d,), ("mlp",), ("embed",), cfg=cfg, rngs=rngs, std=out_std)

    def __call__(self, x_btd: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
        # Streams 1-3 of ``rng`` are the dense layers' own (see Dense); ``rng`` itself the output's.
        h_btf = self.activation(self.wi(x_btd, fold(rng, 1)))
        if self.gated:
            h_btf = h_btf * self.wi_up(x_btd, fold(rng, 2))
        h_btf = constrain(h_btf, ("activation_batch", "activation_length", "activation_mlp"))
        return dropout(self.wo(h_btf, fold(rng, 3)), self.rate, rng)
