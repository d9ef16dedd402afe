"""Skipping bad steps inside the jitted step.

``SkipBadSteps(optimizer, window, zscore)`` wraps an optax optimizer. Its ``step`` takes the
step's gradients and ``loss`` and refuses the update (parameters and inner optimizer state kept
bit for bit) when the loss or the gradients are not finite, or when the loss or the gradient
norm is more than ``zscore`` standard deviations above the mean of the last ``window`` accepted
steps (levanter, OLMo-core and MaxText use 6 over 128). A non-finite update from finite
gradients (rare) makes the next loss non-finite, which is skipped from there on, and a
checkpoint is never written with non-finite parameters (``lm.train.fit``). The z-scores apply once half the window is
filled, so the fast early fall of the loss is not judged against too few steps. Only accepted
steps enter the window.

The guard's statistics live in the optimizer state, so they are checkpointed and a resumed run
decides exactly as an uninterrupted one. What the loop does with a stretch of skips (roll back,
skip data) is ``lm.train.rollback``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# Why a step was skipped (the ``train/skip_reason`` metric); 0: it was not.
ACCEPTED, NON_FINITE, LOSS_SPIKE, GRAD_SPIKE = 0, 1, 2, 3
REASONS = {NON_FINITE: "non-finite loss, gradients or update", LOSS_SPIKE: "loss spike",
           GRAD_SPIKE: "gradient-norm spike"}

# A floor under the window's standard deviation, relative to its mean: a nearly constant window
# (a memorised batch, a plateau) would otherwise call a 0.1% rise a spike.
_RELATIVE_STD_FLOOR = 1e-2


class GuardState(NamedTuple):
    inner: Any                 # the wrapped optimizer's state
    history: jax.Array         # [2, window] float32 ring buffer: accepted losses, gradient norms
    filled: jax.Array          # int32: accepted steps in the window (at most window)
    position: jax.Array        # int32: where the next accepted step is written
    consecutive: jax.Array     # int32: skips in a row up to the last step
    skipped: jax.Array         # int32: skips since the start of training
    reason: jax.Array          # int32: the last step's reason (ACCEPTED when it was applied)
    zscores: jax.Array         # [2] float32: the last step's loss and gradient-norm z-scores


@dataclasses.dataclass(frozen=True)
class SkipBadSteps:
    """``inner`` (an optax optimizer) behind the guard. ``init`` gives a GuardState around the
    inner state; ``step`` applies the update, or skips it and keeps parameters and inner state
    bit for bit. The decision works on the loss and the gradient norm stacked as one pair, so it
    adds only a few small operations to the step (each costs a fixed overhead on CPU)."""
    inner: optax.GradientTransformation
    window: int = 128
    zscore: float = 6.0

    def init(self, params) -> GuardState:
        i0 = jnp.zeros((), jnp.int32)
        return GuardState(self.inner.init(params), jnp.zeros((2, self.window), jnp.float32),
                          i0, i0, i0, i0, i0, jnp.zeros((2,), jnp.float32))

    def step(self, grads, state: GuardState, params, loss) -> tuple[Any, GuardState]:
        """(new parameters, new state). The update runs inside a branch that a skipped step does
        not take, so an accepted step runs the same fused update as an unguarded one."""
        observed = jnp.stack([jnp.asarray(loss, jnp.float32),
                              optax.global_norm(grads).astype(jnp.float32)])
        ready = state.filled >= max(self.window // 2, 2)
        zscores = jnp.where(ready, _zscores(observed, state.history, state.filled), 0.0)
        reason = jnp.select([~jnp.all(jnp.isfinite(observed)), zscores[0] > self.zscore,
                             zscores[1] > self.zscore],
                            [NON_FINITE, LOSS_SPIKE, GRAD_SPIKE], ACCEPTED).astype(jnp.int32)
        accept = reason == ACCEPTED

        def apply():
            updates, inner = self.inner.update(grads, state.inner, params)
            return optax.apply_updates(params, updates), inner

        def skip():
            return params, state.inner
        params, inner = jax.lax.cond(accept, apply, skip)
        return params, self._record(state, inner, accept, reason, observed, zscores)

    def _record(self, state, inner, accept, reason, observed, zscores) -> GuardState:
        """The window gains an accepted step's loss and gradient norm; a skip is counted."""
        written = jax.lax.dynamic_update_slice(state.history, observed[:, None], (0, state.position))
        return GuardState(
            inner=inner,
            history=jnp.where(accept, written, state.history),
            filled=jnp.where(accept, jnp.minimum(state.filled + 1, self.window), state.filled),
            position=jnp.where(accept, jnp.mod(state.position + 1, self.window), state.position),
            consecutive=jnp.where(accept, 0, state.consecutive + 1),
            skipped=state.skipped + (~accept).astype(jnp.int32),
            reason=reason, zscores=zscores)


def _zscores(values: jax.Array, history: jax.Array, filled: jax.Array) -> jax.Array:
    """How many standard deviations each of ``values`` [2] lies above the mean of the first
    ``filled`` entries of its row of ``history`` [2, window] (the whole ring once it is full)."""
    valid = (jnp.arange(history.shape[1]) < filled)[None, :]
    count = jnp.maximum(filled, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, history, 0.0), axis=1) / count
    variance = jnp.sum(jnp.where(valid, jnp.square(history - mean[:, None]), 0.0), axis=1) / count
    std = jnp.maximum(jnp.sqrt(variance), _RELATIVE_STD_FLOOR * jnp.abs(mean) + 1e-12)
    return (values - mean) / std


def guard_metrics(state: GuardState) -> dict:
    """The last step's decision and the running counts, as train metrics."""
    return {"train/skipped": (state.reason != ACCEPTED).astype(jnp.int32),
            "train/skip_reason": state.reason, "train/skips": state.skipped,
            "train/consecutive_skips": state.consecutive,
            "train/loss_zscore": state.zscores[0], "train/grad_norm_zscore": state.zscores[1]}


# What the loop reads each step to act on; the logged rows keep only the running count.
PER_STEP_METRICS = ("train/skipped", "train/skip_reason", "train/consecutive_skips",
                    "train/loss_zscore", "train/grad_norm_zscore")


def is_guarded(optimizer) -> bool:
    return isinstance(optimizer, SkipBadSteps)
