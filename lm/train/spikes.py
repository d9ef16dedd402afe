"""Skipping bad steps inside the jitted step.

``skip_bad_steps(optimizer, window, zscore)`` wraps an optax optimizer. Its ``update`` takes the
step's ``loss`` and refuses the update (zero updates, the inner optimizer state unchanged) when
the loss, the gradients or the updates are not finite, or when the loss or the gradient norm is
more than ``zscore`` standard deviations above the mean of the last ``window`` accepted steps
(levanter, OLMo-core and MaxText use 6 over 128). The z-scores apply once half the window is
filled, so the fast early fall of the loss is not judged against too few steps. Only accepted
steps enter the window.

The guard's statistics live in the optimizer state, so they are checkpointed and a resumed run
decides exactly as an uninterrupted one. What the loop does with a stretch of skips (roll back,
skip data) is ``lm.train.rollback``.
"""
from __future__ import annotations

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
    losses: jax.Array          # [window] float32 ring buffer of accepted steps' losses
    grad_norms: jax.Array      # [window] float32, the same for gradient norms
    filled: jax.Array          # int32: accepted steps in the window (at most window)
    position: jax.Array        # int32: where the next accepted step is written
    consecutive: jax.Array     # int32: skips in a row up to the last step
    skipped: jax.Array         # int32: skips since the start of training
    reason: jax.Array          # int32: the last step's reason (ACCEPTED when it was applied)
    loss_z: jax.Array          # float32: the last step's loss z-score (0 before the window fills)
    grad_z: jax.Array          # float32: the same for the gradient norm


def skip_bad_steps(optimizer: optax.GradientTransformation, window: int = 128,
                   zscore: float = 6.0) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` whose ``update(grads, state, params, loss=...)`` refuses bad steps."""
    inner = optax.with_extra_args_support(optimizer)

    def init(params) -> GuardState:
        zeros = jnp.zeros((window,), jnp.float32)
        i0, f0 = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
        return GuardState(inner.init(params), zeros, zeros, i0, i0, i0, i0, i0, f0, f0)

    def update(grads, state: GuardState, params=None, *, loss, **extra):
        loss = jnp.asarray(loss, jnp.float32)
        grad_norm = optax.global_norm(grads).astype(jnp.float32)
        updates, new_inner = inner.update(grads, state.inner, params, **extra)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(updates))
        ready = state.filled >= max(window // 2, 2)
        loss_z = jnp.where(ready, _zscore(loss, state.losses, state.filled), 0.0)
        grad_z = jnp.where(ready, _zscore(grad_norm, state.grad_norms, state.filled), 0.0)
        reason = jnp.select([~finite, loss_z > zscore, grad_z > zscore],
                            [NON_FINITE, LOSS_SPIKE, GRAD_SPIKE], ACCEPTED).astype(jnp.int32)
        accept = reason == ACCEPTED

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(accept, n, o), new, old)
        slot = state.position
        new_state = GuardState(
            inner=keep(new_inner, state.inner),
            losses=jnp.where(accept, state.losses.at[slot].set(loss), state.losses),
            grad_norms=jnp.where(accept, state.grad_norms.at[slot].set(grad_norm), state.grad_norms),
            filled=jnp.where(accept, jnp.minimum(state.filled + 1, window), state.filled),
            position=jnp.where(accept, jnp.mod(state.position + 1, window), state.position),
            consecutive=jnp.where(accept, 0, state.consecutive + 1),
            skipped=state.skipped + (~accept).astype(jnp.int32),
            reason=reason, loss_z=loss_z, grad_z=grad_z)
        updates = jax.tree.map(lambda u: jnp.where(accept, u, jnp.zeros_like(u)), updates)
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _zscore(value: jax.Array, history: jax.Array, filled: jax.Array) -> jax.Array:
    """How many standard deviations ``value`` lies above the mean of the first ``filled``
    entries of ``history`` (the whole ring once it is full)."""
    valid = jnp.arange(history.shape[0]) < filled
    count = jnp.maximum(filled, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, history, 0.0)) / count
    variance = jnp.sum(jnp.where(valid, jnp.square(history - mean), 0.0)) / count
    std = jnp.maximum(jnp.sqrt(variance), _RELATIVE_STD_FLOOR * jnp.abs(mean) + 1e-12)
    return (value - mean) / std


def guard_metrics(state: GuardState) -> dict:
    """The last step's decision and the running counts, as train metrics."""
    return {"train/skipped": (state.reason != ACCEPTED).astype(jnp.int32),
            "train/skip_reason": state.reason, "train/skips": state.skipped,
            "train/consecutive_skips": state.consecutive,
            "train/loss_zscore": state.loss_z, "train/grad_norm_zscore": state.grad_z}


# What the loop reads each step to act on; the logged rows keep only the running count.
PER_STEP_METRICS = ("train/skipped", "train/skip_reason", "train/consecutive_skips",
                    "train/loss_zscore", "train/grad_norm_zscore")


def is_guarded(opt_state) -> bool:
    return isinstance(opt_state, GuardState)
