"""Sampling text from a model for quick looks during training (sliding window, no KV cache)."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample_logits(logits_bv: jax.Array, rng: jax.Array, temperature: float,
                  top_k: int = 0) -> jax.Array:
    """Greedy at temperature 0; otherwise softmax(logits / T) restricted to the top k."""
    if temperature == 0.0:
        return jnp.argmax(logits_bv, axis=-1)
    logits_bv = logits_bv.astype(jnp.float32) / temperature
    if top_k:
        kth_bv = jax.lax.top_k(logits_bv, top_k)[0][..., -1:]
        logits_bv = jnp.where(logits_bv < kth_bv, -jnp.inf, logits_bv)
    return jax.random.categorical(rng, logits_bv, axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6, 7))
def _generate(graphdef, params, buffer_bl, prompt_len, new_tokens, window, temperature, top_k, rng):
    model = nnx.merge(graphdef, params)

    def step(i, carry):
        buffer_bl, rng = carry
        end = prompt_len + i                       # tokens known so far
        start = jnp.maximum(end - window, 0)
        context_bw = jax.lax.dynamic_slice_in_dim(buffer_bl, start, window, axis=1)
        logits_bwv = model(context_bw)
        last_bv = jax.lax.dynamic_index_in_dim(logits_bwv, end - 1 - start, axis=1, keepdims=False)
        rng, sub = jax.random.split(rng)
        token_b = sample_logits(last_bv, sub, temperature, top_k).astype(buffer_bl.dtype)
        return jax.lax.dynamic_update_index_in_dim(buffer_bl, token_b, end, axis=1), rng
    return jax.lax.fori_loop(0, new_tokens, step, (buffer_bl, rng))[0]


def generate(graphdef: nnx.GraphDef, params, prompt: Sequence[int], max_new_tokens: int,
             window: int, temperature: float = 0.8, top_k: int = 0, seed: int = 0,
             num_samples: int = 1) -> list[list[int]]:
    """``num_samples`` continuations of ``prompt`` (ids), each ``max_new_tokens`` long."""
    prompt = list(prompt) or [0]
    length = max(len(prompt) + max_new_tokens, window)
    buffer = np.zeros((num_samples, length), np.int32)
    buffer[:, : len(prompt)] = prompt
    params = jax.device_get(params)  # sampling is tiny; avoid resharding the whole loop
    out = _generate(graphdef, params, jnp.asarray(buffer), len(prompt), max_new_tokens, window,
                    float(temperature), int(top_k), jax.random.key(seed))
    out = np.asarray(out)
    return [row[len(prompt): len(prompt) + max_new_tokens].tolist() for row in out]
