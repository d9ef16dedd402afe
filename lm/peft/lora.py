"""LoRA (Hu et al. 2021): a dense layer y = x W becomes y = x W + (alpha / r) dropout(x) A B.

A [*in, r] starts uniform in +-1/sqrt(fan_in) (the reference implementation's Kaiming-uniform
bound), B [r, *out] at zero, so a new LoRA model computes exactly what its base model computes.
Attaching swaps each targeted ``Dense`` in its parent for a ``LoRADense``, which takes over the
original's kernel and bias (same variables, same paths) and adds the update, with the factors at
``<dense>/lora/a`` and ``<dense>/lora/b``. They carry the dense layer's own axis names on their
big axes (the rank axis is unnamed, i.e. replicated), so they shard like the kernel they adapt.
Which dense layers get them: ``PeftConfig.lora_targets``, a regular expression that must match
the whole kernel path ('blocks/0/attention/query/kernel').

``merge_lora`` folds the update into the kernel for serving (W + (alpha / r) A B, factors then
zero); ``unmerge_lora`` takes it back out given the factors (e.g. the adapter file's).
"""
from __future__ import annotations

import math
import re
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lm.configlib import ConfigError
from lm.models.config import ModelConfig
from lm.models.layers import Dense, dropout
from lm.peft.config import PeftConfig
from lm.peft.stacking import leading_axes, own_axis_names, stacked_param

SHOWN_PATHS = 8  # kernel paths listed when the target regex matches none


class LoRA(nnx.Module):
    """The low-rank update of one dense layer (stacked like it when its layers are)."""

    def __init__(self, dense: Dense, cfg: ModelConfig, peft: PeftConfig, rngs: nnx.Rngs):
        n_in, n_out = len(dense.in_shape), len(dense.out_shape)
        lead = leading_axes(dense.kernel, n_in + n_out)
        names = own_axis_names(dense.kernel, n_in + n_out)
        rank = peft.lora_rank
        self.in_size = math.prod(dense.in_shape)
        self.scale = peft.lora_scale
        self.rate = peft.lora_dropout
        bound = self.in_size ** -0.5
        self.a = stacked_param(rngs, _uniform(bound), lead, (*dense.in_shape, rank),
                               (*names[:n_in], None), cfg.param_dtype)
        self.b = stacked_param(rngs, jax.nn.initializers.zeros, lead, (rank, *dense.out_shape),
                               (None, *names[n_in:]), cfg.param_dtype)

    def __call__(self, x: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
        """(alpha / r) dropout(x) A B for x [..., *in], flattened to [N, out] like ``matmul_2d``."""
        x_nk = dropout(x.reshape(-1, self.in_size), self.rate, rng)
        a_kr = self.a[...].astype(x.dtype).reshape(self.in_size, -1)
        b_rm = self.b[...].astype(x.dtype)
        b_rm = b_rm.reshape(b_rm.shape[0], -1)
        # The scale multiplies the [r, out] factor, not the [N, out] product: one pass less
        # over a full-size activation.
        return (x_nk @ a_kr) @ (b_rm * self.scale)


class LoRADense(Dense):
    """A dense layer plus its low-rank update: ``dense(x) + lora(x)``. It stands in for
    ``dense`` in its parent and owns the same kernel and bias variables. The update's dropout
    draws from the call's ``rng`` (the stream the parent gives that layer)."""

    def __init__(self, dense: Dense, cfg: ModelConfig, peft: PeftConfig, rngs: nnx.Rngs):
        self.in_shape, self.out_shape, self.dtype = dense.in_shape, dense.out_shape, dense.dtype
        self.kernel, self.bias = dense.kernel, dense.bias
        self.lora = LoRA(dense, cfg, peft, rngs)

    def __call__(self, x: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
        y = super().__call__(x)
        return y + self.lora(x.astype(self.dtype), rng).reshape(y.shape)


def _uniform(bound: float):
    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def dense_layers(model: nnx.Module) -> list[tuple[tuple, Dense]]:
    """Every dense layer of ``model`` with its path from ``model`` (attribute names, list
    indices)."""
    return [(tuple(path), node) for path, node in nnx.iter_graph(model) if isinstance(node, Dense)]


def kernel_path(path: tuple) -> str:
    """The '/'-joined path of the kernel of the dense layer at ``path``, which lora_targets
    matches."""
    return "/".join(str(k) for k in path) + "/kernel"


def replace_module(root: nnx.Module, path: tuple, new: nnx.Module) -> None:
    """Puts ``new`` where the module at ``path`` (from ``root``) is, in its parent."""
    parent = root
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def no_target_error(pattern: str, kernel_paths: list[str]) -> ConfigError:
    shown = ", ".join(kernel_paths[:SHOWN_PATHS])
    more = f" (and {len(kernel_paths) - SHOWN_PATHS} more)" if len(kernel_paths) > SHOWN_PATHS else ""
    return ConfigError(f"config.peft.lora_targets={pattern!r} matches no dense kernel (the regex must "
                       f"match a whole path); the kernels are: {shown}{more}")


def targeted(pattern: str, kernel_paths: list[str]) -> list[str]:
    """The kernel paths ``pattern`` fully matches; refuses a pattern that matches none."""
    regex = re.compile(pattern)
    chosen = [path for path in kernel_paths if regex.fullmatch(path)]
    if not chosen:
        raise no_target_error(pattern, kernel_paths)
    return chosen


def attach_lora(model: nnx.Module, cfg: ModelConfig, peft: PeftConfig, rngs: nnx.Rngs) -> None:
    """Every dense layer whose kernel path matches ``peft.lora_targets`` swapped for a
    ``LoRADense`` holding it and its factors."""
    layers = dense_layers(model)
    chosen = set(targeted(peft.lora_targets, [kernel_path(path) for path, _ in layers]))
    for path, dense in layers:
        if kernel_path(path) in chosen:
            replace_module(model, path, LoRADense(dense, cfg, peft, rngs))


# ----------------------------------------------------------------------------- merge and unmerge


def _update(kernel, a, b, scale: float):
    """(alpha / r) A B in the kernel's shape, for any leading (stacked-layer) axes."""
    lead = a.ndim + b.ndim - 2 - kernel.ndim
    rank = b.shape[lead]
    a_lkr = a.reshape(*a.shape[:lead], -1, rank)
    b_lrm = b.reshape(*b.shape[:lead], rank, -1)
    product = jnp.matmul(a_lkr.astype(jnp.float32), b_lrm.astype(jnp.float32),
                         precision=jax.lax.Precision.HIGHEST)
    return scale * product.reshape(kernel.shape)


def _map_adapted_layers(params: dict, fn, factors: Optional[dict] = None, path: str = "") -> dict:
    """``params`` with every dense layer that has LoRA factors (a dict with 'kernel' and 'lora')
    replaced by ``fn(layer, its factors, path)``; the factors come from ``factors`` when given."""
    out = {}
    for key, value in params.items():
        here = f"{path}/{key}" if path else str(key)
        if not isinstance(value, dict):
            out[key] = value
            continue
        source = None if factors is None else factors.get(key, {})
        if "kernel" in value and "lora" in value:
            own = value["lora"] if source is None else source.get("lora")
            if own is None:
                raise ValueError(f"no LoRA factors given for {here}/lora")
            out[key] = fn(value, own, here)
        else:
            out[key] = _map_adapted_layers(value, fn, source, here)
    return out


def merge_lora(params: dict, peft: PeftConfig) -> dict:
    """Every adapted kernel W replaced by W + (alpha / r) A B and its factors zeroed: the same
    function (the zero factors add exactly zero), served at the base model's cost per token once
    the factors are dropped (``split_adapter``)."""
    scale = peft.lora_scale

    def merge(layer, factors, _):
        kernel = layer["kernel"]
        merged = kernel + _update(kernel, factors["a"], factors["b"], scale).astype(kernel.dtype)
        return {**layer, "kernel": merged,
                "lora": {name: jnp.zeros_like(w) for name, w in factors.items()}}
    return _map_adapted_layers(params, merge)


def unmerge_lora(params: dict, peft: PeftConfig, factors: dict) -> dict:
    """The inverse of ``merge_lora``: W - (alpha / r) A B with the factors A, B put back.
    ``factors`` holds them at their paths, e.g. ``split_adapter(params_before_merge, mask)[1]``
    or the tree ``load_adapter`` returns."""
    scale = peft.lora_scale

    def unmerge(layer, own, _):
        kernel = layer["kernel"]
        base = kernel - _update(kernel, own["a"], own["b"], scale).astype(kernel.dtype)
        return {**layer, "kernel": base, "lora": dict(own)}
    return _map_adapted_layers(params, unmerge, factors)
