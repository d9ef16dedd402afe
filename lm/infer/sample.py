"""Token choice from logits (``sample_logits``, shared by every decoder and the n-gram baseline),
and the sliding-window sampler without a KV cache (kept as the reference that the cached decoder
of lm/infer/decode.py is benchmarked against)."""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample_logits(logits_bv: jax.Array, rng: jax.Array, temperature: float,
                  top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                  seen_bv: Optional[jax.Array] = None) -> jax.Array:
    """One token per row: greedy at temperature 0; otherwise softmax(logits / T) restricted to
    the top k and to the nucleus of mass ``top_p``. ``repetition_penalty`` (CTRL) first divides
    the positive logits of the tokens marked in ``seen_bv`` and multiplies their negative ones."""
    logits_bv = penalize_repetition(logits_bv.astype(jnp.float32), repetition_penalty, seen_bv)
    if temperature == 0.0:
        return jnp.argmax(logits_bv, axis=-1)
    return jax.random.categorical(rng, filter_logits(logits_bv, temperature, top_k, top_p), axis=-1)


def penalize_repetition(logits_bv: jax.Array, penalty: float,
                        seen_bv: Optional[jax.Array]) -> jax.Array:
    if penalty == 1.0 or seen_bv is None:
        return logits_bv
    penalized_bv = jnp.where(logits_bv > 0, logits_bv / penalty, logits_bv * penalty)
    return jnp.where(seen_bv, penalized_bv, logits_bv)


def filter_logits(logits_bv: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """logits / T with -inf outside the k most likely tokens and outside the smallest set of
    most likely tokens whose probability reaches ``top_p``."""
    logits_bv = logits_bv.astype(jnp.float32) / temperature
    if top_k:
        kth_bv = jax.lax.top_k(logits_bv, top_k)[0][..., -1:]
        logits_bv = jnp.where(logits_bv < kth_bv, -jnp.inf, logits_bv)
    if top_p < 1.0:
        logits_bv = _nucleus(logits_bv, top_p)
    return logits_bv


def _nucleus(logits_bv: jax.Array, top_p: float) -> jax.Array:
    """Keeps a token when the mass of the tokens ranked before it is still below ``top_p``."""
    order_bv = jnp.argsort(-logits_bv, axis=-1, stable=True)
    sorted_bv = jnp.take_along_axis(logits_bv, order_bv, axis=-1)
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    keep_sorted_bv = mass_before_bv < top_p
    keep_bv = jnp.zeros_like(keep_sorted_bv).at[
        jnp.arange(logits_bv.shape[0])[:, None], order_bv].set(keep_sorted_bv)
    return jnp.where(keep_bv, logits_bv, -jnp.inf)


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
    out = _generate(graphdef, params, jnp.asarray(buffer), len(prompt), max_new_tokens, window,
                    float(temperature), int(top_k), jax.random.key(seed))
    out = np.asarray(out)
    return [row[len(prompt): len(prompt) + max_new_tokens].tolist() for row in out]
