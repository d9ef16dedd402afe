"""Cached decoding under jit for every generating architecture.

  prompts -> left-padded [B, P] (each row's positions start at 0 at its first token)
          -> prefill: the whole prompt in one call, filling the cache (prefix decoders attend
             bidirectionally over the prompt; an encoder-decoder encodes the prompt once and
             starts its decoder from the start token)
          -> one cached step per new token inside one jitted lax.while_loop (sampling) or
             lax.fori_loop (beam search), all shapes static

The cache is the model's: key/value arrays [L, B, G, S, K] (decoder, prefix decoder), plus the
memory's cross-attention keys and values (encoder-decoder), or the (h, c) state (LSTM). Slot s of
row b holds the token at position s - pad_b; slots before pad_b are masked out. Tokens are chosen
by ``lm.infer.sample.sample_logits``; beam search ranks finished hypotheses by
log p / ((5 + length) / 6) ** length_penalty (GNMT). Stop strings are cut on the host from the
decoded text. Every request is checked before anything is traced (``check_request``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.infer.sample import sample_logits
from lm.models.attention import CacheStep
from lm.parallel.axes import axis_rules

GENERATING_ARCHS = ("decoder", "prefix_decoder", "encoder_decoder", "lstm")
DECODER_START_ID = 0  # the encoder-decoder's first decoder input: PAD, T5's start token


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0          # 0: greedy
    top_k: int = 0                    # 0: no cut
    top_p: float = 1.0                # nucleus mass; 1: no cut
    repetition_penalty: float = 1.0   # CTRL's penalty on tokens already in the row; 1: none
    beam_size: int = 1                # > 1: beam search (deterministic; ignores the five above)
    length_penalty: float = 0.0       # GNMT alpha of beam search; 0: plain log-probability
    stop_tokens: tuple[int, ...] = ()  # a row ends at the first of these (not returned)
    stop_strings: tuple[str, ...] = ()  # text is cut before the first of these (generate_text)
    seed: int = 0
    pad_id: int = 0                   # fills the rows and steps past a row's end


@dataclasses.dataclass
class Generation:
    tokens: list[list[int]]           # new tokens of each row, cut before its first stop token
    logits: Optional[np.ndarray] = None  # [B, N, V] float32 each token was chosen from (sampling)
    scores: Optional[np.ndarray] = None  # [B] beam search: the chosen hypothesis's score


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about one compiled decode."""
    arch: str
    settings: DecodeSettings
    cache_len: int
    return_logits: bool
    mesh: Any = None
    rules: Any = None


def check_request(cfg, prompts: Sequence[Sequence[int]], settings: DecodeSettings,
                  context: Optional[int] = None) -> None:
    """Refuses, with the field named, what cannot be decoded: an encoder, empty or too long
    prompts, more tokens than the cache holds, sampling settings out of range."""
    if cfg.arch not in GENERATING_ARCHS:
        raise ValueError(f"config.model.arch={cfg.arch!r} does not generate text; use one of "
                         f"{', '.join(GENERATING_ARCHS)}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty: give at least one token")
        bad = [t for t in prompt if not 0 <= int(t) < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {row} has token ids outside the vocabulary of "
                             f"{cfg.vocab_size}: {bad[:5]}")
    _check_settings(settings)
    _check_lengths(cfg, max(len(p) for p in prompts), settings.max_new_tokens, context)


def _check_settings(s: DecodeSettings) -> None:
    checks = (("max_new_tokens", s.max_new_tokens >= 1, ">= 1"),
              ("temperature", s.temperature >= 0.0, ">= 0"),
              ("top_k", s.top_k >= 0, ">= 0 (0: no cut)"),
              ("top_p", 0.0 < s.top_p <= 1.0, "in (0, 1]"),
              ("repetition_penalty", s.repetition_penalty > 0.0, "> 0 (1: none)"),
              ("beam_size", s.beam_size >= 1, ">= 1"),
              ("length_penalty", s.length_penalty >= 0.0, ">= 0"))
    for field, ok, rule in checks:
        if not ok:
            raise ValueError(f"{field}={getattr(s, field)!r} must be {rule}")


def _check_lengths(cfg, prompt_len: int, max_new: int, context: Optional[int]) -> None:
    if cfg.arch == "lstm":
        limit = context  # the recurrent state has no length limit of its own
    else:
        limit = min(context or cfg.max_len, cfg.max_len)
    if limit is None:
        return
    where = "config.model.max_len / data.seq_len"
    if prompt_len > limit:
        raise ValueError(f"prompt of {prompt_len} tokens is longer than the context of {limit} "
                         f"tokens ({where})")
    if cfg.arch == "lstm":
        return
    used = (1 if cfg.arch == "encoder_decoder" else prompt_len) + max_new
    if used > limit:
        what = "the start token" if cfg.arch == "encoder_decoder" else f"prompt ({prompt_len} tokens)"
        raise ValueError(f"max_new_tokens={max_new}: {what} + max_new_tokens = {used} exceed the "
                         f"cache of {limit} positions ({where}); lower max_new_tokens")


def generate(graphdef: nnx.GraphDef, params, prompts: Sequence[Sequence[int]],
             settings: DecodeSettings = DecodeSettings(), *, context: Optional[int] = None,
             mesh=None, rules=None, return_logits: bool = False) -> Generation:
    """New tokens for each prompt (token ids; the encoder input of an encoder-decoder).
    ``context`` caps prompt + new tokens (default: config.model.max_len). With ``mesh`` the
    decode is traced under its ``rules`` (parameters may be sharded on it)."""
    if prompts and isinstance(prompts[0], (int, np.integer)):
        prompts = [prompts]
    cfg = nnx.merge(graphdef, params).cfg
    check_request(cfg, prompts, settings, context)
    inputs = _layout(cfg.arch, prompts)
    prompt_width = inputs["tokens"].shape[1]
    static = dataclasses.replace(settings, seed=0, stop_strings=())  # one compile for every seed
    plan = _Plan(cfg.arch, static, prompt_width + settings.max_new_tokens - 1, return_logits,
                 mesh, None if rules is None else tuple(rules))
    out = jax.device_get(_decode(graphdef, plan, params, inputs, jax.random.key(settings.seed)))
    tokens = [_cut(row, settings.stop_tokens) for row in np.asarray(out["tokens"])]
    return Generation(tokens, out.get("logits"), out.get("scores"))


def generate_text(graphdef: nnx.GraphDef, params, vocab, prompts: Sequence[str],
                  settings: DecodeSettings = DecodeSettings(), **kwargs) -> list[str]:
    """Continuations of text prompts, each cut before the first of ``settings.stop_strings``."""
    generation = generate(graphdef, params, [vocab.encode(p) for p in prompts], settings, **kwargs)
    return [truncate_at_stop(vocab.decode(row), settings.stop_strings) for row in generation.tokens]


def generate_past_context(graphdef: nnx.GraphDef, params, prompt: Sequence[int],
                          settings: DecodeSettings, context: int) -> list[int]:
    """``settings.max_new_tokens`` tokens after one prompt, beyond the context if need be: when
    the cache is full, the last half of the context is prefilled again and decoding goes on
    (two compiled shapes at most). The recurrent model needs no refill."""
    cfg = nnx.merge(graphdef, params).cfg
    prompt = list(prompt)
    if cfg.arch in ("lstm", "encoder_decoder") or len(prompt) + settings.max_new_tokens <= context:
        return generate(graphdef, params, [prompt], settings, context=context).tokens[0]
    keep = max(context // 2, 1)
    text, new = list(prompt[-keep:] if len(prompt) > keep else prompt), []
    chunk = 0
    while len(new) < settings.max_new_tokens:
        window = text[-keep:] if chunk else text
        step = dataclasses.replace(settings, max_new_tokens=context - len(window),
                                   seed=settings.seed + chunk)
        tokens = generate(graphdef, params, [window], step, context=context).tokens[0]
        new += tokens
        text += tokens
        if len(tokens) < step.max_new_tokens:  # a stop token ended the row
            break
        chunk += 1
    return new[: settings.max_new_tokens]


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (all of it when none occurs)."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[: min(cuts)] if cuts else text


def _cut(row: np.ndarray, stop_tokens: Sequence[int]) -> list[int]:
    row = row.tolist()
    ends = [i for i, t in enumerate(row) if t in stop_tokens]
    return row[: ends[0]] if ends else row


def _layout(arch: str, prompts: Sequence[Sequence[int]]) -> dict:
    """Host arrays: prompts left-padded to [B, P] with their pad counts (an encoder-decoder's
    prompts right-padded as encoder inputs with segment ids, and the start token as its
    decoder prompt)."""
    width = max(len(p) for p in prompts)
    if arch == "encoder_decoder":
        encoder = np.zeros((len(prompts), width), np.int32)
        segments = np.zeros((len(prompts), width), np.int32)
        for row, prompt in enumerate(prompts):
            encoder[row, : len(prompt)] = prompt
            segments[row, : len(prompt)] = 1
        return {"tokens": np.full((len(prompts), 1), DECODER_START_ID, np.int32),
                "pad": np.zeros(len(prompts), np.int32),
                "encoder_tokens": encoder, "encoder_segments": segments}
    tokens = np.zeros((len(prompts), width), np.int32)
    pad = np.zeros(len(prompts), np.int32)
    for row, prompt in enumerate(prompts):
        pad[row] = width - len(prompt)
        tokens[row, pad[row]:] = prompt
    return {"tokens": tokens, "pad": pad}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode(graphdef, plan: _Plan, params, inputs, rng):
    def run():
        model = nnx.merge(graphdef, params)
        if plan.settings.beam_size > 1:
            return _beam_search(model, plan, inputs)
        return _sample(model, plan, inputs, rng)
    if plan.mesh is None:
        return run()
    with axis_rules(plan.mesh, plan.rules):
        return run()


# ---------------------------------------------------------------------------------------------
# The model side: prefill and one step, per architecture.

def _positions(slots, pad_b):
    """Position of each row's token in each slot (0 at and before its first token)."""
    return jnp.maximum(slots[None, :] - pad_b[:, None], 0)


def _row_context(arch: str, inputs: dict) -> dict:
    """Per-row arrays every call reads (batch axis 0)."""
    rows = {"pad": inputs["pad"]}
    if arch == "encoder_decoder":
        rows["cross_mask"] = (inputs["encoder_segments"] == 1)[:, None, None, :]
    return rows


def _prefill_mask(pad_b, width: int, cache_len: int, bidirectional: bool):
    """[B, 1, P, S]: prompt slot t sees its row's slots s <= t (all prompt slots when
    ``bidirectional``), and itself (so that a padding slot's softmax is over something)."""
    t = jnp.arange(width)[:, None]
    s = jnp.arange(cache_len)[None, :]
    valid_bs = s >= pad_b[:, None]
    reach_ts = (s < width) if bidirectional else (s <= t)
    mask_bts = (valid_bs[:, None, :] & reach_ts[None]) | (s == t)[None]
    return mask_bts[:, None]


def _step_mask(pad_b, slot, cache_len: int):
    """[B, 1, 1, S]: the token in ``slot`` sees its row's slots up to itself."""
    s = jnp.arange(cache_len)[None, :]
    return ((s >= pad_b[:, None]) & (s <= slot))[:, None, None, :]


def _call(model, arch: str, rows: dict, tokens_bt, positions_bt, cache, step: Optional[CacheStep]):
    if arch == "lstm":
        return model.decode(tokens_bt, positions_bt, cache)
    if arch == "encoder_decoder":
        return model.decode_cached(tokens_bt, positions_bt, cache, step, rows["cross_mask"])
    return model.decode(tokens_bt, positions_bt, cache, step)


def _prefill(model, plan: _Plan, inputs: dict, rows: dict):
    """Logits [B, V] after each prompt, and the filled cache."""
    tokens_bp, pad_b = inputs["tokens"], rows["pad"]
    batch, width = tokens_bp.shape
    slots = jnp.arange(plan.cache_len)
    positions_bp = _positions(jnp.arange(width), pad_b)
    step = CacheStep(jnp.int32(0),
                     _prefill_mask(pad_b, width, plan.cache_len, plan.arch == "prefix_decoder"),
                     _positions(slots, pad_b))
    if plan.arch == "lstm":
        cache = model.init_cache(batch)
    elif plan.arch == "encoder_decoder":
        memory_bsd = model.encode(inputs["encoder_tokens"], None, inputs["encoder_segments"])
        cache = model.init_cache(memory_bsd, plan.cache_len)
    else:
        cache = model.init_cache(batch, plan.cache_len)
    logits_bpv, cache = _call(model, plan.arch, rows, tokens_bp, positions_bp, cache, step)
    return logits_bpv[:, -1].astype(jnp.float32), cache


def _advance(model, plan: _Plan, rows: dict, cache, token_b, slot):
    """Logits [B, V] after ``token_b`` placed in ``slot``, and the cache holding it."""
    pad_b = rows["pad"]
    positions_b1 = (slot - pad_b)[:, None]
    step = CacheStep(slot, _step_mask(pad_b, slot, plan.cache_len),
                     _positions(jnp.arange(plan.cache_len), pad_b))
    logits_b1v, cache = _call(model, plan.arch, rows, token_b[:, None], positions_b1, cache, step)
    return logits_b1v[:, 0].astype(jnp.float32), cache


# ---------------------------------------------------------------------------------------------
# Sampling (greedy, temperature, top-k, top-p, repetition penalty).

def _sample(model, plan: _Plan, inputs: dict, rng):
    s = plan.settings
    rows = _row_context(plan.arch, inputs)
    logits_bv, cache = _prefill(model, plan, inputs, rows)
    batch, vocab = logits_bv.shape
    width = inputs["tokens"].shape[1]
    stop = jnp.asarray(s.stop_tokens or (-1,), jnp.int32)
    seen_bv = None
    if s.repetition_penalty != 1.0:
        prompt = inputs["encoder_tokens"] if plan.arch == "encoder_decoder" else inputs["tokens"]
        real = (inputs["encoder_segments"] == 1 if plan.arch == "encoder_decoder"
                else jnp.arange(width)[None, :] >= rows["pad"][:, None])
        counts_bv = jnp.zeros((batch, vocab), jnp.int32).at[jnp.arange(batch)[:, None], prompt].add(
            real.astype(jnp.int32))
        seen_bv = counts_bv > 0

    def choose(i, logits_bv, state):
        rng, sub = jax.random.split(state["rng"])
        token_b = sample_logits(logits_bv, sub, s.temperature, s.top_k, s.top_p,
                                s.repetition_penalty, state["seen"]).astype(jnp.int32)
        token_b = jnp.where(state["done"], s.pad_id, token_b)
        state = {**state, "rng": rng, "done": state["done"] | jnp.isin(token_b, stop),
                 "tokens": state["tokens"].at[:, i].set(token_b)}
        if state["seen"] is not None:
            state["seen"] = state["seen"].at[jnp.arange(batch), token_b].set(True)
        if state["logits"] is not None:
            state["logits"] = state["logits"].at[:, i].set(logits_bv)
        return token_b, state

    state = {"rng": rng, "done": jnp.zeros(batch, bool), "seen": seen_bv,
             "tokens": jnp.full((batch, s.max_new_tokens), s.pad_id, jnp.int32),
             "logits": (jnp.zeros((batch, s.max_new_tokens, vocab), jnp.float32)
                        if plan.return_logits else None)}
    token_b, state = choose(0, logits_bv, state)

    def cond(carry):
        i, _, _, state = carry
        return (i < s.max_new_tokens) & ~jnp.all(state["done"])

    def body(carry):
        i, token_b, cache, state = carry
        logits_bv, cache = _advance(model, plan, rows, cache, token_b, width + i - 1)
        token_b, state = choose(i, logits_bv, state)
        return i + 1, token_b, cache, state

    state = jax.lax.while_loop(cond, body, (jnp.int32(1), token_b, cache, state))[3]
    out = {"tokens": state["tokens"]}
    if plan.return_logits:
        out["logits"] = state["logits"]
    return out


# ---------------------------------------------------------------------------------------------
# Beam search.

def length_penalty(length, alpha: float):
    """GNMT (Wu et al. 2016): ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def _beam_search(model, plan: _Plan, inputs: dict):
    """The highest-scoring hypothesis per row over ``beam_size`` beams: a hypothesis finishes at a
    stop token or at max_new_tokens, scored log p / length_penalty(its length)."""
    s = plan.settings
    beams, steps = s.beam_size, s.max_new_tokens
    rows = _row_context(plan.arch, inputs)
    logits_bv, cache = _prefill(model, plan, inputs, rows)
    batch, vocab = logits_bv.shape
    width = inputs["tokens"].shape[1]
    repeat = functools.partial(jnp.repeat, repeats=beams)
    cache = jax.tree.map(lambda c: repeat(c, axis=1), cache)  # layers first, then rows
    rows = jax.tree.map(lambda r: repeat(r, axis=0), rows)
    stop = jnp.asarray(s.stop_tokens or (-1,), jnp.int32)
    candidates = min(2 * beams, beams * vocab)
    neg_inf = jnp.float32(-jnp.inf)

    def select(i, logits_nv, state):
        logp_bkv = (jax.nn.log_softmax(logits_nv, axis=-1).reshape(batch, beams, vocab)
                    + state["alive_logp"][..., None])
        cand_logp, flat = jax.lax.top_k(logp_bkv.reshape(batch, -1), candidates)
        origin, token = flat // vocab, flat % vocab
        cand_seq = jnp.take_along_axis(state["alive_seq"], origin[..., None], axis=1)
        cand_seq = cand_seq.at[:, :, i].set(token)
        ends = jnp.isin(token, stop)
        finished = (ends | (i == steps - 1)) & jnp.isfinite(cand_logp)
        cand_score = jnp.where(finished, cand_logp / length_penalty(i + 1, s.length_penalty), neg_inf)
        done_score, keep = jax.lax.top_k(
            jnp.concatenate([state["done_score"], cand_score], axis=1), beams)
        done_seq = jnp.take_along_axis(
            jnp.concatenate([state["done_seq"], cand_seq], axis=1), keep[..., None], axis=1)
        alive_logp, keep = jax.lax.top_k(jnp.where(ends, neg_inf, cand_logp), beams)
        state = {"alive_logp": alive_logp,
                 "alive_seq": jnp.take_along_axis(cand_seq, keep[..., None], axis=1),
                 "done_score": done_score, "done_seq": done_seq}
        parent_n = (jnp.take_along_axis(origin, keep, axis=1) + beams * jnp.arange(batch)[:, None])
        return jnp.take_along_axis(token, keep, axis=1).reshape(-1), parent_n.reshape(-1), state

    state = {"alive_logp": jnp.full((batch, beams), neg_inf).at[:, 0].set(0.0),
             "alive_seq": jnp.full((batch, beams, steps), s.pad_id, jnp.int32),
             "done_score": jnp.full((batch, beams), neg_inf),
             "done_seq": jnp.full((batch, beams, steps), s.pad_id, jnp.int32)}
    token_n, parent_n, state = select(0, repeat(logits_bv, axis=0), state)

    def body(i, carry):
        token_n, parent_n, cache, state = carry
        cache = jax.tree.map(lambda c: jnp.take(c, parent_n, axis=1), cache)
        logits_nv, cache = _advance(model, plan, rows, cache, token_n, width + i - 1)
        token_n, parent_n, state = select(i, logits_nv, state)
        return token_n, parent_n, cache, state

    state = jax.lax.fori_loop(1, steps, body, (token_n, parent_n, cache, state))[3]
    best = jnp.argmax(state["done_score"], axis=1)
    tokens = jnp.take_along_axis(state["done_seq"], best[:, None, None], axis=1)[:, 0]
    return {"tokens": tokens, "scores": jnp.max(state["done_score"], axis=1)}
