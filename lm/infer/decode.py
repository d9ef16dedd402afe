"""Cached decoding under jit for every generating architecture, through the models' decoding
protocol (lm/models/decoding.py), so that nothing here depends on the architecture.

  prompts -> model.decoding.decode_inputs: left-padded [B, P] (each row's positions start at 0 at
             its first token; an encoder-decoder's prompts become its encoder input)
          -> model.prefill: the whole prompt in one call, filling the cache
          -> model.decode_step: one cached step per new token inside one jitted lax.while_loop
             per cache-length bucket (lm/infer/segments.py), all shapes static

Tokens are chosen by ``lm.infer.sample.sample_logits``; beam search is lm/infer/beam.py. Stop
strings are cut on the host from the decoded text. Every request is checked before anything is
traced (``check_request``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.infer import segments
from lm.infer.beam import beam_search, length_penalty  # noqa: F401  (length_penalty re-exported)
from lm.infer.sample import sample_logits
from lm.models.decoding import DECODER_START_ID, GENERATING_ARCHS, decoding_for  # noqa: F401
from lm.parallel.axes import STANDARD_RULES, outputs_to_host, traced_on_mesh


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


def check_request(cfg, prompts: Sequence[Sequence[int]], settings: DecodeSettings,
                  context: Optional[int] = None) -> None:
    """Refuses, with the field named, what cannot be decoded: a model that does not generate,
    empty or too long prompts, more tokens than the cache holds, sampling settings out of
    range."""
    scheme = decoding_for(cfg)
    if not scheme.can_generate:
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
    scheme.check_lengths(max(len(p) for p in prompts), settings.max_new_tokens, context)


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


def _scheme(graphdef: nnx.GraphDef, params):
    """The model's decoding scheme. Its config is read from the graph merged with the
    parameters' shapes alone, so no parameter's data is touched."""
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return decoding_for(nnx.merge(graphdef, shapes).cfg)


def generate(graphdef: nnx.GraphDef, params, prompts: Sequence[Sequence[int]],
             settings: DecodeSettings = DecodeSettings(), *, context: Optional[int] = None,
             mesh=None, rules=None, return_logits: bool = False) -> Generation:
    """New tokens for each prompt (token ids; the encoder input of an encoder-decoder).
    ``context`` caps prompt + new tokens (default: config.model.max_len). With ``mesh`` the
    decode is traced under its ``rules`` (parameters may be sharded on it)."""
    if prompts and isinstance(prompts[0], (int, np.integer)):
        prompts = [prompts]
    scheme = _scheme(graphdef, params)
    check_request(scheme.cfg, prompts, settings, context)
    inputs = scheme.decode_inputs(prompts)
    width = inputs["tokens"].shape[1]
    total = scheme.cache_length(width, settings.max_new_tokens)
    lengths = segments.cache_lengths(total, width, scheme.slot_cache, segments.MIN_BUCKET)
    static = dataclasses.replace(settings, seed=0, stop_strings=())  # one compile for every seed
    rules = None if mesh is None else tuple(STANDARD_RULES if rules is None else rules)
    plan = segments.Plan(static, lengths, return_logits, mesh, rules)
    # Only the new tokens (and logits or scores) come to the host, replicated on the mesh so
    # that every process can read them; the parameters stay where they are.
    decoded = _decode(graphdef, plan, params, inputs, jax.random.key(settings.seed))
    out = outputs_to_host(decoded)
    tokens = [_cut(row, settings.stop_tokens) for row in np.asarray(out["tokens"])]
    return Generation(tokens, out.get("logits"), out.get("scores"))


def generate_text(graphdef: nnx.GraphDef, params, vocab, prompts: Sequence[str],
                  settings: DecodeSettings = DecodeSettings(), **kwargs) -> list[str]:
    """Continuations of text prompts, each cut before the first of ``settings.stop_strings``."""
    generation = generate(graphdef, params, [vocab.encode(p) for p in prompts], settings, **kwargs)
    return [truncate_at_stop(vocab.decode(row), settings.stop_strings) for row in generation.tokens]


def generate_past_context(graphdef: nnx.GraphDef, params, prompt: Sequence[int],
                          settings: DecodeSettings, context: int, **kwargs) -> list[int]:
    """``settings.max_new_tokens`` tokens after one prompt, beyond the context if need be: when
    the cache is full, the last half of the context is prefilled again and decoding goes on
    (two compiled shapes at most). Models that do not refill (a recurrent state, an
    encoder-decoder's encoded prompt) decode in one call. ``kwargs``: ``generate``'s mesh and
    rules."""
    scheme = _scheme(graphdef, params)
    prompt = list(prompt)
    if not scheme.refills_past_context or len(prompt) + settings.max_new_tokens <= context:
        return generate(graphdef, params, [prompt], settings, context=context, **kwargs).tokens[0]
    keep = max(context // 2, 1)
    text, new = list(prompt[-keep:] if len(prompt) > keep else prompt), []
    chunk = 0
    while len(new) < settings.max_new_tokens:
        window = text[-keep:] if chunk else text
        step = dataclasses.replace(settings, max_new_tokens=context - len(window),
                                   seed=settings.seed + chunk)
        tokens = generate(graphdef, params, [window], step, context=context, **kwargs).tokens[0]
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


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode(graphdef, plan: segments.Plan, params, inputs, rng):
    def run():
        model = nnx.merge(graphdef, params)
        if plan.settings.beam_size > 1:
            return beam_search(model, plan, inputs)
        return _sample(model, plan, inputs, rng)
    return traced_on_mesh(plan.mesh, plan.rules, run)


# ---------------------------------------------------------------------------------------------
# Sampling (greedy, temperature, top-k, top-p, repetition penalty).

def _sample(model, plan: segments.Plan, inputs: dict, rng):
    s = plan.settings
    logits_bv, cache = segments.prefill(model, plan, inputs)
    batch, vocab = logits_bv.shape
    width = inputs["tokens"].shape[1]
    choose = functools.partial(_choose, s, jnp.asarray(s.stop_tokens or (-1,), jnp.int32))
    state = {"rng": rng, "done": jnp.zeros(batch, bool), "seen": _seen(model, s, inputs, vocab),
             "tokens": jnp.full((batch, s.max_new_tokens), s.pad_id, jnp.int32),
             "logits": (jnp.zeros((batch, s.max_new_tokens, vocab), jnp.float32)
                        if plan.return_logits else None)}
    token_b, state = choose(0, logits_bv, state)

    def body(i, cache, carry):
        token_b, state = carry
        logits_bv, cache = model.decode_step(token_b, cache, width + i - 1)
        return cache, choose(i, logits_bv, state)

    state = segments.run_segments(model, plan, width, s.max_new_tokens, cache, (token_b, state),
                                  body, running=lambda carry: ~jnp.all(carry[1]["done"]))[1]
    out = {"tokens": state["tokens"]}
    if plan.return_logits:
        out["logits"] = state["logits"]
    return out


def _seen(model, s: DecodeSettings, inputs: dict, vocab: int):
    """[B, V]: the tokens each prompt holds, for the repetition penalty (None without one)."""
    if s.repetition_penalty == 1.0:
        return None
    prompt_bp, real_bp = model.decoding.prompt_ids(inputs)
    batch = prompt_bp.shape[0]
    counts_bv = jnp.zeros((batch, vocab), jnp.int32).at[jnp.arange(batch)[:, None], prompt_bp].add(
        real_bp.astype(jnp.int32))
    return counts_bv > 0


def _choose(s: DecodeSettings, stop, i, logits_bv, state: dict):
    """The token of step ``i`` for each row (padding once a row has stopped), recorded."""
    batch = logits_bv.shape[0]
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
