"""SPMD pipeline parallelism: the GPipe and circular schedules as one ``lax.scan``.

    x [B, T, D] -> M microbatches [M, B/M, T, D] -> S stages x L/(R*S) layers, R passes -> [B, T, D]

Every device runs the same program. The layer weights are stacked [R, S, Lp, ...] and the
activation buffer is [S, B/M, T, D]; the rules table shards their stage axes ('stage',
'activation_stage') over the ``pipeline`` mesh axis, so ``jax.vmap`` over stages runs one stage
per pipeline shard and shifting the buffer by one stage (``jnp.roll``) is a collective permute.

Schedule. Item k = r*M + i of the stream is microbatch i on its pass r (r < R; GPipe is R = 1).
At iteration t stage s works on item t - s with the weights [r, s], i.e. logical layers
(r*S + s)*Lp ... (r*S + s)*Lp + Lp - 1, so a pipelined model equals the sequential one with the
same weights reshaped. After R*M + S - 1 iterations every item has passed every stage; stage s
idles (the bubble) for s iterations at the start and S - 1 - s at the end.

Between passes a microbatch waits in a storage buffer [S, M, B/M, T, D]: it starts as the input,
and stage S-1's output of each pass, once the shift has carried it to stage 0's shard, overwrites
the microbatch's slot there; stage 0 reads slot t mod M at iteration t. Only stage 0's shard of the
storage is read (the other shards keep copies: memory but no communication). Pass r of
microbatch i is read at iteration r*M + i and pass r - 1 was written at (r-1)*M + i + S - 1, so
the circular schedule needs M >= S, the same condition as GPipe; M need not be a multiple of S.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lm.parallel.axes import constrain

# layer_fn(one layer's state, x [B/M, T, D], that microbatch's rows, logical layer index,
# microbatch index) -> x [B/M, T, D]
LayerFn = Callable[[Any, jax.Array, Any, jax.Array, jax.Array], jax.Array]

_BUFFER_AXES = ("activation_stage", "activation_batch", "activation_norm_length",
                "activation_embed")
_STORAGE_AXES = ("activation_stage", None, "activation_batch", "activation_norm_length",
                 "activation_embed")
_MICROBATCH_AXES = (None, "activation_batch", "activation_norm_length", "activation_embed")


def num_iterations(stages: int, microbatches: int, repeats: int = 1) -> int:
    """Scan steps of the schedule: every one of the R*M items enters stage 0, plus S-1 to drain."""
    return repeats * microbatches + stages - 1


def bubble_fraction(stages: int, microbatches: int, repeats: int = 1) -> float:
    """Share of stage-iterations spent idle: (S-1) / (R*M + S-1)."""
    return (stages - 1) / num_iterations(stages, microbatches, repeats)


def split_microbatches(x_b: jax.Array, microbatches: int) -> jax.Array:
    """[B, ...] -> [M, B/M, ...] where microbatch i holds rows i, i+M, i+2M, ...

    Strided rather than contiguous rows: with the batch sharded over data x fsdp in contiguous
    blocks, every shard keeps its own rows of every microbatch, so splitting moves no data.
    """
    batch = x_b.shape[0]
    if batch % microbatches:
        raise ValueError(f"a batch of {batch} rows does not split into {microbatches} pipeline "
                         f"microbatches; make config.model.pipeline_microbatches divide it")
    x_bm = x_b.reshape(batch // microbatches, microbatches, *x_b.shape[1:])
    return jnp.swapaxes(x_bm, 0, 1)


def merge_microbatches(x_mb: jax.Array) -> jax.Array:
    """Inverse of :func:`split_microbatches`: [M, B/M, ...] -> [B, ...]."""
    return jnp.swapaxes(x_mb, 0, 1).reshape(-1, *x_mb.shape[2:])


def pipeline_apply(layer_fn: LayerFn, stacked_layers: Any, x_btd: jax.Array,
                   rows: Any = None, *, stages: int, microbatches: int,
                   repeats: int = 1) -> jax.Array:
    """Runs the L = R*S*Lp stacked layers on ``x_btd`` [B, T, D] with the pipeline schedule.

    ``stacked_layers``: a pytree whose leaves are [S, Lp, ...] (GPipe, ``repeats=1``) or
    [R, S, Lp, ...] (circular). ``rows``: a pytree of per-row inputs [B, ...] (positions, segment
    ids) that travel with their microbatch. ``layer_fn`` applies one layer (see ``LayerFn``); wrap
    it in ``jax.checkpoint`` for rematerialisation. Differentiable; trace it under
    ``axis_rules`` to shard the stages over the pipeline mesh axis.
    """
    _check_schedule(stages, microbatches, repeats)
    layers_rs = _with_repeat_axis(stacked_layers, stages, repeats)
    x_mbtd = split_microbatches(x_btd, microbatches)
    rows_mb = jax.tree.map(lambda a: split_microbatches(a, microbatches), rows)
    # Weights [R, S, Lp, ...] are mapped over their stage axis, the buffer over its first.
    run_stages = jax.vmap(functools.partial(_run_stage, layer_fn=layer_fn, rows_mb=rows_mb,
                                            stages=stages, microbatches=microbatches,
                                            repeats=repeats),
                          in_axes=(1, 0, 0, None))
    stage_ids = jnp.arange(stages)

    def iteration(carry, t):
        shifted_sbtd, storage_smbtd = carry
        feed_sbtd = jax.lax.dynamic_index_in_dim(storage_smbtd, t % microbatches, axis=1,
                                                 keepdims=False)
        stage_in_sbtd = constrain(jnp.where(_first(stage_ids, feed_sbtd), feed_sbtd, shifted_sbtd),
                                  _BUFFER_AXES)
        out_sbtd = run_stages(layers_rs, stage_in_sbtd, stage_ids, t)
        # Stage s's output becomes stage s+1's input; stage S-1's wraps round to stage 0's shard.
        shifted_sbtd = constrain(jnp.roll(out_sbtd, 1, axis=0), _BUFFER_AXES)
        storage_smbtd = _store_finished(storage_smbtd, shifted_sbtd, t - (stages - 1),
                                        microbatches)
        return (shifted_sbtd, storage_smbtd), None

    storage_smbtd = constrain(jnp.broadcast_to(x_mbtd, (stages, *x_mbtd.shape)), _STORAGE_AXES)
    shifted_sbtd = constrain(jnp.zeros((stages, *x_mbtd.shape[1:]), x_btd.dtype), _BUFFER_AXES)
    (_, storage_smbtd), _ = jax.lax.scan(iteration, (shifted_sbtd, storage_smbtd),
                                         jnp.arange(num_iterations(stages, microbatches, repeats)))
    return merge_microbatches(constrain(storage_smbtd[0], _MICROBATCH_AXES))


def _check_schedule(stages: int, microbatches: int, repeats: int) -> None:
    if stages < 1 or repeats < 1:
        raise ValueError(f"pipeline stages={stages} and repeats={repeats} must be >= 1")
    if microbatches < stages:
        raise ValueError(f"{microbatches} pipeline microbatches is a microbatch count below the "
                         f"stage count {stages}")


def _with_repeat_axis(stacked_layers: Any, stages: int, repeats: int) -> Any:
    """Leaves [S, Lp, ...] or [R, S, Lp, ...] -> [R, S, Lp, ...] (a free reshape for R = 1)."""
    lead = (stages,) if repeats == 1 else (repeats, stages)
    what = "stages" if repeats == 1 else "(repeats, stages)"

    def check(leaf):
        if leaf.shape[:len(lead)] != lead:
            raise ValueError(f"stacked layer weights of shape {leaf.shape} do not start with "
                             f"{what} = {lead}")
        return leaf if repeats > 1 else leaf[None]
    return jax.tree.map(check, stacked_layers)


def _first(stage_ids: jax.Array, like_sbtd: jax.Array) -> jax.Array:
    """[S, 1, 1, ...] mask of stage 0, broadcastable against ``like_sbtd``."""
    return (stage_ids == 0).reshape(-1, *(1,) * (like_sbtd.ndim - 1))


def _store_finished(storage_smbtd: jax.Array, shifted_sbtd: jax.Array, item: jax.Array,
                    microbatches: int) -> jax.Array:
    """Writes the item that just left the last stage (now in stage 0's slot) to its microbatch.

    During the first S-1 iterations nothing has finished (item < 0): the slot keeps its value,
    which may still be an input that stage 0 has not read yet.
    """
    slot = item % microbatches
    old_sbtd = jax.lax.dynamic_index_in_dim(storage_smbtd, slot, axis=1, keepdims=False)
    new_sbtd = jnp.where(item >= 0, shifted_sbtd, old_sbtd)
    return jax.lax.dynamic_update_index_in_dim(storage_smbtd, new_sbtd, slot, axis=1)


def _select_repeat(layers_rl: Any, repeat: jax.Array, repeats: int) -> Any:
    """[R, Lp, ...] -> [Lp, ...]; static for GPipe, whose gather would cost compile time."""
    if repeats == 1:
        return jax.tree.map(lambda w: w[0], layers_rl)
    return jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, repeat, 0, keepdims=False),
                        layers_rl)


def _run_stage(layers_rl: Any, x_btd: jax.Array, stage: jax.Array, t: jax.Array, *,
               layer_fn: LayerFn, rows_mb: Any, stages: int, microbatches: int,
               repeats: int) -> jax.Array:
    """One stage at iteration t: its Lp layers of the current pass on item t - stage.

    Outside the schedule (item < 0 or >= R*M: the bubble) the stage computes on whatever its
    slot holds, with clipped indices; that result is never stored.
    """
    item = t - stage
    repeat = jnp.clip(item // microbatches, 0, repeats - 1)
    microbatch = item % microbatches
    layers_l = _select_repeat(layers_rl, repeat, repeats)
    rows = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, microbatch, 0, keepdims=False),
                        rows_mb)
    layers_per_stage = jax.tree.leaves(layers_l)[0].shape[0]
    first_layer = (repeat * stages + stage) * layers_per_stage

    def layer(x, state_and_index):
        state, j = state_and_index
        return layer_fn(state, x, rows, first_layer + j, microbatch), None
    x_btd, _ = jax.lax.scan(layer, x_btd, (layers_l, jnp.arange(layers_per_stage)))
    return x_btd
