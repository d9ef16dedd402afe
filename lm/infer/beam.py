"""Beam search over the model's cached decoding protocol (lm/models/decoding.py).

Each row keeps ``beam_size`` live hypotheses and the ``beam_size`` best finished ones. A
hypothesis finishes at a stop token or at max_new_tokens and is ranked by
log p / length_penalty(its length) (GNMT); live ones are ranked by log p. Rows of the cache
follow their hypotheses with ``model.select_rows``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lm.infer.segments import Plan, prefill, run_segments


def length_penalty(length, alpha: float):
    """GNMT (Wu et al. 2016): ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(model, plan: Plan, inputs: dict) -> dict:
    """The highest-scoring hypothesis per row: {"tokens" [B, N], "scores" [B]}."""
    s = plan.settings
    beams, steps = s.beam_size, s.max_new_tokens
    logits_bv, cache = prefill(model, plan, inputs)
    batch, _ = logits_bv.shape
    width = inputs["tokens"].shape[1]
    cache = model.select_rows(cache, jnp.repeat(jnp.arange(batch), beams))
    select = functools.partial(_select, s, beams, steps)
    state = {"alive_logp": jnp.full((batch, beams), -jnp.inf).at[:, 0].set(0.0),
             "alive_seq": jnp.full((batch, beams, steps), s.pad_id, jnp.int32),
             "done_score": jnp.full((batch, beams), -jnp.inf),
             "done_seq": jnp.full((batch, beams, steps), s.pad_id, jnp.int32)}
    token_n, parent_n, state = select(0, jnp.repeat(logits_bv, beams, axis=0), state)

    def body(i, cache, carry):
        token_n, parent_n, state = carry
        cache = model.select_rows(cache, parent_n)
        logits_nv, cache = model.decode_step(token_n, cache, width + i - 1)
        return cache, select(i, logits_nv, state)

    state = run_segments(model, plan, width, steps, cache, (token_n, parent_n, state), body)[2]
    best = jnp.argmax(state["done_score"], axis=1)
    tokens = jnp.take_along_axis(state["done_seq"], best[:, None, None], axis=1)[:, 0]
    return {"tokens": tokens, "scores": jnp.max(state["done_score"], axis=1)}


def _select(s, beams: int, steps: int, i, logits_nv, state: dict):
    """Step ``i``: every live hypothesis extended by every token; the best finished ones kept,
    the best unfinished ones live on. Returns (their last tokens [B*beams], the flat rows they
    continue [B*beams], the state)."""
    batch, vocab = logits_nv.shape[0] // beams, logits_nv.shape[1]
    stop = jnp.asarray(s.stop_tokens or (-1,), jnp.int32)
    neg_inf = jnp.float32(-jnp.inf)
    logp_bkv = (jax.nn.log_softmax(logits_nv, axis=-1).reshape(batch, beams, vocab)
                + state["alive_logp"][..., None])
    cand_logp, flat = jax.lax.top_k(logp_bkv.reshape(batch, -1), min(2 * beams, beams * vocab))
    origin, token = flat // vocab, flat % vocab
    cand_seq = jnp.take_along_axis(state["alive_seq"], origin[..., None], axis=1)
    cand_seq = cand_seq.at[:, :, i].set(token)
    ends = jnp.isin(token, stop)
    finished = (ends | (i == steps - 1)) & jnp.isfinite(cand_logp)
    cand_score = jnp.where(finished, cand_logp / length_penalty(i + 1, s.length_penalty), neg_inf)
    done_score, keep = jax.lax.top_k(jnp.concatenate([state["done_score"], cand_score], axis=1), beams)
    done_seq = jnp.take_along_axis(jnp.concatenate([state["done_seq"], cand_seq], axis=1),
                                   keep[..., None], axis=1)
    alive_logp, keep = jax.lax.top_k(jnp.where(ends, neg_inf, cand_logp), beams)
    state = {"alive_logp": alive_logp,
             "alive_seq": jnp.take_along_axis(cand_seq, keep[..., None], axis=1),
             "done_score": done_score, "done_seq": done_seq}
    parent_n = jnp.take_along_axis(origin, keep, axis=1) + beams * jnp.arange(batch)[:, None]
    return jnp.take_along_axis(token, keep, axis=1).reshape(-1), parent_n.reshape(-1), state
