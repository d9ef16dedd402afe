"""What each architecture does to generate text and to be scored, so that lm/infer and lm/eval
hold no architecture switches.

Every model class (``Decoder``, ``EncoderDecoder``, ``LSTMLM``) offers one protocol:

  model.forward(batch, packed, dropout_rng)   logits [B, T, V] of a training or eval batch
  model.can_generate                          False only for the encoder (masked LM)
  model.decoding                              this architecture's scheme (below): host layouts
                                              of prompts and scoring pairs, length limits
  model.init_cache(batch, length)             an empty cache with ``length`` slots per row
  model.prefill(inputs, cache)                logits [B, V] after each prompt, the filled cache
  model.decode_step(tokens_b, cache, slot)    logits [B, V] after one new token per row, which
                                              goes to ``slot``; the cache holding it
  model.grow_cache(cache, length)             the same cache with ``length`` slots
  model.select_rows(cache, rows_n)            the cache of rows ``rows_n`` (beam search)

The schemes (``CausalDecoding``, ``PrefixDecoding``, ``EncoderDecoderDecoding``,
``RecurrentDecoding``, ``EncoderOnly``) are plain per-architecture classes of a ``ModelConfig``;
``decoding_for(cfg)`` picks one, so callers that hold only a config (request checks) need no
model. ``SlotCache`` gives the attention models the cached methods over a key/value cache whose
slot s of row b holds the token at position s - pad_b (prompts are left-padded).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.models.attention import KV_CACHE_AXES, CacheStep, empty_kv_cache
from lm.parallel.axes import constrain

DECODER_START_ID = 0  # the encoder-decoder's first decoder input: PAD, T5's start token
CONTEXT_SOURCE = "config.model.max_len / data.seq_len"
Pair = tuple[list[int], list[int]]


# ---------------------------------------------------------------------------------------------
# Host layouts shared by the schemes.

def left_padded(prompts: Sequence[Sequence[int]]) -> dict:
    """Prompts left-padded to [B, P] ("tokens") with each row's pad count ("pad")."""
    width = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), width), np.int32)
    pad = np.zeros(len(prompts), np.int32)
    for row, prompt in enumerate(prompts):
        pad[row] = width - len(prompt)
        tokens[row, pad[row]:] = prompt
    return {"tokens": tokens, "pad": pad}


def right_padded(sequences: Sequence[Sequence[int]], length: int, rows: int):
    """[rows, length] ids right-padded with 0, and [rows, length] segment ids (1 on tokens)."""
    ids, segments = np.zeros((rows, length), np.int32), np.zeros((rows, length), np.int32)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = sequence
        segments[row, :len(sequence)] = 1
    return ids, segments


def positions_of(rows: int, length: int) -> np.ndarray:
    return np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy()


def bucket(length: int, cap: int) -> int:
    """The next power of two at or above ``length``, but not above ``cap``."""
    return min(1 << max(length - 1, 0).bit_length(), cap)


def _length_error(prompt_len: int, limit: int) -> ValueError:
    return ValueError(f"prompt of {prompt_len} tokens is longer than the context of {limit} "
                      f"tokens ({CONTEXT_SOURCE})")


# ---------------------------------------------------------------------------------------------
# The schemes.

class CausalDecoding:
    """Causal decoder: prompts left-padded and prefilled into the cache, which holds prompt and
    new tokens; pairs scored as one sequence context + continuation[:-1]."""
    can_generate = True
    bidirectional_prompt = False      # the prompt attends causally when prefilled
    refills_past_context = True       # past its context, decoding prefills the last half again
    continuation_alone = False         # a continuation is what the whole text adds (tokenizer)
    slot_cache = True                 # the cache has slots (bucketed by length while decoding)

    def __init__(self, cfg):
        self.cfg = cfg

    def window(self, context_len: int) -> int:
        """Tokens one scored or generated sequence may span."""
        return min(context_len, self.cfg.max_len)

    def decode_inputs(self, prompts: Sequence[Sequence[int]]) -> dict:
        return left_padded(prompts)

    def prompt_ids(self, inputs: dict):
        """The prompt ids [B, P] a row has already seen and where they are real [B, P]."""
        tokens_bp = inputs["tokens"]
        return tokens_bp, jnp.arange(tokens_bp.shape[1])[None, :] >= inputs["pad"][:, None]

    def cache_length(self, width: int, max_new: int) -> int:
        """Slots for a prompt of ``width`` and ``max_new`` tokens (the last is never cached)."""
        return width + max_new - 1

    def check_lengths(self, prompt_len: int, max_new: int, context: Optional[int]) -> None:
        limit = min(context or self.cfg.max_len, self.cfg.max_len)
        if prompt_len > limit:
            raise _length_error(prompt_len, limit)
        self._check_room(self._cached_prompt(prompt_len), max_new, limit)

    def _cached_prompt(self, prompt_len: int) -> tuple[int, str]:
        return prompt_len, f"prompt ({prompt_len} tokens)"

    def _check_room(self, cached: tuple[int, str], max_new: int, limit: int) -> None:
        used = cached[0] + max_new
        if used > limit:
            raise ValueError(f"max_new_tokens={max_new}: {cached[1]} + max_new_tokens = {used} "
                             f"exceed the cache of {limit} positions ({CONTEXT_SOURCE}); lower "
                             f"max_new_tokens")

    def fit_window(self, context: list[int], continuation: list[int], window: int) -> Pair:
        """The pair with its context cut from the left to fit ``window``."""
        return context[-(window + 1 - len(continuation)):], continuation

    def fit_new_tokens(self, max_new: int, window: int) -> int:
        """New tokens one request may ask for within ``window``."""
        return max_new

    def prompt_room(self, max_new: int, window: int) -> int:
        """Prompt tokens kept (from the right) next to ``max_new`` new ones."""
        return window - max_new

    def score_layout(self, pairs: Sequence[Pair], rows: int, window: int):
        """Host arrays of one scoring batch, right-padded to bucketed lengths, and the
        [rows, length] mask of the positions whose targets are continuation tokens."""
        length = bucket(max(len(c) + len(t) - 1 for c, t in pairs), window)
        sequences = [context + continuation for context, continuation in pairs]
        inputs, _ = right_padded([s[:-1] for s in sequences], length, rows)
        targets, _ = right_padded([s[1:] for s in sequences], length, rows)
        prefix, _ = right_padded([[1] * len(context) for context, _ in pairs], length, rows)
        scored = np.zeros((rows, length), bool)
        for row, (context, continuation) in enumerate(pairs):
            scored[row, len(context) - 1:len(context) + len(continuation) - 1] = True
        batch = {"inputs": inputs, "targets": targets, "positions": positions_of(rows, length)}
        return self._with_prefix(batch, prefix), scored

    def _with_prefix(self, batch: dict, prefix: np.ndarray) -> dict:
        return batch


class PrefixDecoding(CausalDecoding):
    """Prefix decoder: as the causal decoder, with the prompt (the scored context) attended
    bidirectionally."""
    bidirectional_prompt = True

    def _with_prefix(self, batch: dict, prefix: np.ndarray) -> dict:
        return {**batch, "bidirectional": prefix}


class EncoderDecoderDecoding(CausalDecoding):
    """Encoder-decoder: the prompt (the scored context) is the encoder input; the decoder starts
    from the start token, its positions bounded by the context."""
    refills_past_context = False
    continuation_alone = True

    def decode_inputs(self, prompts: Sequence[Sequence[int]]) -> dict:
        encoder, segments = right_padded(prompts, max(len(p) for p in prompts), len(prompts))
        return {"tokens": np.full((len(prompts), 1), DECODER_START_ID, np.int32),
                "pad": np.zeros(len(prompts), np.int32),
                "encoder_tokens": encoder, "encoder_segments": segments}

    def prompt_ids(self, inputs: dict):
        return inputs["encoder_tokens"], inputs["encoder_segments"] == 1

    def _cached_prompt(self, prompt_len: int) -> tuple[int, str]:
        return 1, "the start token"

    def fit_window(self, context: list[int], continuation: list[int], window: int) -> Pair:
        return context[-window:], continuation

    def fit_new_tokens(self, max_new: int, window: int) -> int:
        """The decoder holds the start token and at most window - 1 new ones."""
        return max(window - 1, 1) if max_new >= window else max_new

    def prompt_room(self, max_new: int, window: int) -> int:
        return window

    def score_layout(self, pairs: Sequence[Pair], rows: int, window: int):
        source = bucket(max(len(c) for c, _ in pairs), window)
        length = bucket(max(len(t) for _, t in pairs), window)
        encoder, encoder_segments = right_padded([c for c, _ in pairs], source, rows)
        inputs, segments = right_padded([[DECODER_START_ID] + t[:-1] for _, t in pairs], length, rows)
        targets, _ = right_padded([t for _, t in pairs], length, rows)
        batch = {"encoder_inputs": encoder, "encoder_segment_ids": encoder_segments,
                 "encoder_positions": positions_of(rows, source), "inputs": inputs,
                 "targets": targets, "segment_ids": segments, "positions": positions_of(rows, length)}
        return batch, segments.astype(bool)


class RecurrentDecoding(CausalDecoding):
    """LSTM: the recurrent state has no length limit of its own, so only ``context`` (when
    given) bounds the prompt, and the cache has no slots."""
    refills_past_context = False
    slot_cache = False

    def window(self, context_len: int) -> int:
        return context_len

    def check_lengths(self, prompt_len: int, max_new: int, context: Optional[int]) -> None:
        if context is not None and prompt_len > context:
            raise _length_error(prompt_len, context)

    def prompt_room(self, max_new: int, window: int) -> int:
        return window


class EncoderOnly(CausalDecoding):
    """Encoder (masked LM): neither generates nor scores continuations."""
    can_generate = False
    why_not = ("is a bidirectional (masked-LM) encoder: it gives no probability to a "
               "continuation and cannot generate")


SCHEMES = {"decoder": CausalDecoding, "prefix_decoder": PrefixDecoding,
           "encoder_decoder": EncoderDecoderDecoding, "lstm": RecurrentDecoding,
           "encoder": EncoderOnly}
GENERATING_ARCHS = tuple(arch for arch, scheme in SCHEMES.items() if scheme.can_generate)


def scheme_of(arch: str) -> Optional[type]:
    """The scheme class of the architecture named ``arch`` (None for an unknown name)."""
    return SCHEMES.get(arch)


def decoding_for(cfg) -> CausalDecoding:
    """The scheme of ``cfg.arch``, for ``cfg``."""
    if scheme_of(cfg.arch) is None:
        raise ValueError(f"config.model.arch={cfg.arch!r} is not one of {', '.join(SCHEMES)}")
    return SCHEMES[cfg.arch](cfg)


# ---------------------------------------------------------------------------------------------
# The model side: what a cached call sees, and caches whose slots hold keys and values.

def slot_positions(slots, pad_b):
    """Position of each row's token in each slot (0 at and before its first token)."""
    return jnp.maximum(slots[None, :] - pad_b[:, None], 0)


def prefill_step(pad_b, width: int, length: int, bidirectional: bool) -> CacheStep:
    """The prompt's call: slot t sees its row's slots s <= t (all prompt slots when
    ``bidirectional``), and itself (so that a padding slot's softmax is over something)."""
    t = jnp.arange(width)[:, None]
    s = jnp.arange(length)[None, :]
    valid_bs = s >= pad_b[:, None]
    reach_ts = (s < width) if bidirectional else (s <= t)
    mask_bts = (valid_bs[:, None, :] & reach_ts[None]) | (s == t)[None]
    return CacheStep(jnp.int32(0), mask_bts[:, None], slot_positions(jnp.arange(length), pad_b))


def token_step(pad_b, slot, length: int) -> CacheStep:
    """One token in ``slot``: it sees its row's slots up to itself."""
    s = jnp.arange(length)[None, :]
    mask_b11s = ((s >= pad_b[:, None]) & (s <= slot))[:, None, None, :]
    return CacheStep(slot, mask_b11s, slot_positions(jnp.arange(length), pad_b))


def grow_slots(kv: dict, length: int) -> dict:
    """Keys and values [L, B, G, S, K] with zero slots appended up to ``length``."""
    def grow(x):
        widths = [(0, 0)] * x.ndim
        widths[3] = (0, length - x.shape[3])
        return constrain(jnp.pad(x, widths), ("layers", *KV_CACHE_AXES))
    return jax.tree.map(grow, kv)


def slot_count(kv: dict) -> int:
    """S of keys and values [L, B, G, S, K]."""
    return kv["key"].shape[3]


def take_rows(tree, rows_n, axis: int):
    return jax.tree.map(lambda x: jnp.take(x, rows_n, axis=axis), tree)


class SlotCache:
    """The cached protocol methods of an attention model. The cache is ``{"self": keys and values
    [L, B, G, S, K], "pad": [B]}`` plus what ``_start_cache`` adds; a model implements
    ``_decode_slots(tokens_bt, positions_bt, cache, step) -> (logits [B, T, V], self keys and
    values)`` and may override ``_start_cache(inputs, cache)`` (the encoder-decoder encodes)."""

    # Cache entries stacked over the layers (rows on axis 1); the others have rows on axis 0.
    LAYERED = ("self", "cross")

    @property
    def decoding(self) -> CausalDecoding:
        return decoding_for(self.cfg)

    @property
    def can_generate(self) -> bool:
        return self.decoding.can_generate

    def init_cache(self, batch: int, length: int) -> dict:
        """An empty key/value cache of ``length`` slots for ``batch`` rows."""
        if not self.can_generate:
            raise ValueError(f"config.model.arch={self.cfg.arch!r} does not generate: it has no "
                             f"causal decoder to cache")
        return {"self": empty_kv_cache(batch, length, self.cfg, self.cfg.num_layers),
                "pad": jnp.zeros(batch, jnp.int32)}

    def prefill(self, inputs: dict, cache: dict):
        """Logits [B, V] (float32) after each left-padded prompt ``inputs["tokens"]``, and the
        cache holding the prompts."""
        tokens_bp, pad_b = inputs["tokens"], inputs["pad"]
        width, length = tokens_bp.shape[1], slot_count(cache["self"])
        cache = {**self._start_cache(inputs, cache), "pad": pad_b}
        step = prefill_step(pad_b, width, length, self.decoding.bidirectional_prompt)
        logits_bpv, kv = self._decode_slots(tokens_bp, slot_positions(jnp.arange(width), pad_b),
                                            cache, step)
        return logits_bpv[:, -1].astype(jnp.float32), {**cache, "self": kv}

    def decode_step(self, tokens_b, cache: dict, slot):
        """Logits [B, V] (float32) after ``tokens_b`` placed in ``slot``, and the cache."""
        pad_b = cache["pad"]
        step = token_step(pad_b, slot, slot_count(cache["self"]))
        logits_b1v, kv = self._decode_slots(tokens_b[:, None], (slot - pad_b)[:, None], cache, step)
        return logits_b1v[:, 0].astype(jnp.float32), {**cache, "self": kv}

    def grow_cache(self, cache: dict, length: int) -> dict:
        return {**cache, "self": grow_slots(cache["self"], length)}

    def select_rows(self, cache: dict, rows_n) -> dict:
        return {name: take_rows(value, rows_n, 1 if name in self.LAYERED else 0)
                for name, value in cache.items()}

    def _start_cache(self, inputs: dict, cache: dict) -> dict:
        return cache
