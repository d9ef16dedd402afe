"""Compile-only sizing of cached decoding on a mesh: per-device bytes of the parameters and of
the KV cache, and XLA's memory plan for one cached decode step, without allocating anything.

    python -m launch.compile --config=experiments/palm.py:8b --fake_devices=64 \\
        --config.mesh.fsdp=16 --config.mesh.tensor=4 --decode_batch=32 --decode_length=2048

The cache is laid out by the model (``init_cache`` under the run's rules: rows over the batch
axes, KV heads over ``tensor`` where they divide); its shardings are read off the compiled
``init_cache``, so the figures are the layout decoding really uses.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def per_device_bytes(tree) -> int:
    """Bytes one device holds of ``tree`` (ShapeDtypeStructs with shardings)."""
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
               for leaf in jax.tree.leaves(tree))


def total_bytes(tree) -> int:
    return sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def abstract_cache(run, batch: int, length: int):
    """The empty cache's shapes with the shardings the model gives it on ``run``'s mesh."""
    def empty(params):
        return nnx.merge(run.graphdef, params).init_cache(batch, length)
    params = run.abstract_params()
    compiled = jax.jit(run.with_rules(empty)).lower(params).compile()
    shapes = jax.eval_shape(empty, params)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, compiled.output_shardings)


def decode_report(run, batch: int, length: int) -> dict:
    """Per-device parameter and cache bytes, and the memory plan of one cached decode step of
    ``batch`` rows over a ``length``-slot cache (the cache donated, as in the decode loop)."""
    params, cache = run.abstract_params(), abstract_cache(run, batch, length)

    def step(params, cache, tokens_b, slot):
        return nnx.merge(run.graphdef, params).decode_step(tokens_b, cache, slot)
    tokens = jax.ShapeDtypeStruct((batch,), jnp.int32)
    slot = jax.ShapeDtypeStruct((), jnp.int32)
    compiled = jax.jit(run.with_rules(step), donate_argnums=1).lower(params, cache, tokens, slot).compile()
    memory = compiled.memory_analysis()
    report = {"decode_batch": batch, "decode_length": length,
              "param_bytes_total": total_bytes(params), "param_bytes_per_device": per_device_bytes(params),
              "kv_cache_bytes_total": total_bytes(cache), "kv_cache_bytes_per_device": per_device_bytes(cache)}
    if memory is not None:
        report["decode_step_temp_bytes_per_device"] = int(memory.temp_size_in_bytes)
        report["decode_step_argument_bytes_per_device"] = int(memory.argument_size_in_bytes)
    return report


def format_decode_report(report: dict) -> str:
    gib = 2 ** 30
    line = (f"cached decoding, batch {report['decode_batch']} x {report['decode_length']} slots: "
            f"parameters {report['param_bytes_per_device'] / gib:.3f} GiB per device "
            f"({report['param_bytes_total'] / gib:.2f} GiB in all), KV cache "
            f"{report['kv_cache_bytes_per_device'] / gib:.3f} GiB per device "
            f"({report['kv_cache_bytes_total'] / gib:.2f} GiB in all)")
    if "decode_step_temp_bytes_per_device" in report:
        line += f", step temporaries {report['decode_step_temp_bytes_per_device'] / gib:.3f} GiB per device"
    return line
