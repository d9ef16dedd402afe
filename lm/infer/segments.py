"""Decoding in cache-length buckets: a step reads only the slots its bucket holds.

A decode of a prompt of width P and N new tokens needs P + N - 1 cache slots (the last token is
never cached), but step i (1 <= i < N) only reads slots 0 .. P + i - 1. Reading the whole static
cache at every step made batched decoding memory-bound (docs/results/decoding.md), so the steps
run in segments: one ``lax.while_loop`` per bucket of slots (powers of two from
``MIN_BUCKET``, the last one exactly P + N - 1), the cache grown with zero slots in between.
Masked slots add exactly nothing to attention, so the tokens do not depend on the buckets. A
few buckets per decode keep the compiled loops few; a cache without slots (the LSTM's state)
runs in one segment.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from lm.models.decoding import bucket

# Below this many slots a step's attention costs little next to its matmuls, so the first
# segment starts here rather than at the prompt's next power of two.
MIN_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one compiled decode."""
    settings: Any                 # lm.infer.decode.DecodeSettings (seed and stop strings cleared)
    lengths: tuple[int, ...]      # cache slots of each segment, increasing; the last holds all
    return_logits: bool
    mesh: Any = None
    rules: Any = None


def cache_lengths(total: int, width: int, slot_cache: bool, min_bucket: int) -> tuple[int, ...]:
    """Slots of each segment for a prompt of ``width`` and a cache of ``total`` slots: powers of
    two from max(``min_bucket``, the first that holds one new token), then ``total``."""
    if not slot_cache:
        return (total,)
    lengths, length = [], max(min_bucket, bucket(width + 1, 1 << 62))
    while length < total:
        lengths.append(length)
        length *= 2
    return (*lengths, total)


def prefill(model, plan: Plan, inputs: dict):
    """Logits [B, V] after each prompt, and the cache of the first segment holding them."""
    cache = model.init_cache(inputs["tokens"].shape[0], plan.lengths[0])
    return model.prefill(inputs, cache)


def run_segments(model, plan: Plan, width: int, steps: int, cache, carry,
                 body: Callable, running: Optional[Callable] = None):
    """``body(i, cache, carry) -> (cache, carry)`` for i = 1 .. steps - 1, step i writing slot
    width + i - 1; one while loop per segment, each step in the first segment whose cache holds
    width + i slots. ``running(carry)`` false ends the loops early. Returns the last carry."""
    i = jnp.int32(1)
    for index, length in enumerate(plan.lengths):
        if index:
            cache = model.grow_cache(cache, length)
        stop = min(length - width + 1, steps)
        i, cache, carry = jax.lax.while_loop(_condition(stop, running), _loop_body(body),
                                             (i, cache, carry))
    return carry


def _condition(stop: int, running: Optional[Callable]):
    def cond(loop):
        i, _, carry = loop
        going = i < stop
        return going if running is None else going & running(carry)
    return cond


def _loop_body(body: Callable):
    def step(loop):
        i, cache, carry = loop
        cache, carry = body(i, cache, carry)
        return i + 1, cache, carry
    return step
