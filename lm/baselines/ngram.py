"""An interpolated Kneser-Ney n-gram language model (orders 1..6), counted with NumPy.

Model (Chen & Goodman 1998, interpolated Kneser-Ney with one absolute discount per level). For
an order-n model and a context h of n - 1 tokens,

    P_n(w | h) = (max(c(h w) - D, 0) + D * N1+(h .) * P_{n-1}(w | h')) / c(h)

where h' drops the first token of h, c are raw counts and N1+(h .) is the number of distinct
tokens seen after h. Levels k < n use continuation counts instead of raw counts: the count of a
k-gram g is N1+(. g), the number of distinct tokens seen before it, so a lower level estimates
how readily a token follows a *new* context. Level 0 is the uniform distribution over the whole
vocabulary, so every token keeps a nonzero probability. A context whose count at some level is
0 (never seen, or for continuation counts never seen after another token) takes the next lower
level's distribution unchanged.

Each level's discount is D = n1 / (n1 + 2 n2), n1 and n2 the numbers of n-grams of that level
counted exactly once and twice (raw counts at the top, continuation counts below), unless one D
is given for all levels. D must lie in (0, 1]: then every seen context keeps exactly the mass
it removes, so each distribution sums to 1.

Short contexts. A context of m < n - 1 tokens (the first positions of an evaluation row, or a
short prompt) is scored with the order-(m + 1) model fitted on the same counts: raw counts at
level m + 1, continuation counts below. The order-n model's own level m + 1 uses continuation
counts, which estimate novel-context behaviour and would misjudge plain frequencies.

Counting. A k-gram (t_1 .. t_k) of token ids below V is the int64 key sum_i t_i V^(k - i); with
keys sorted, a k-gram's context (its first k - 1 tokens) is ``key // V`` and its suffix (its
last k - 1 tokens) is ``key % V^(k-1)``, so every count is one ``np.unique`` and every lookup one
``np.searchsorted``. V^n must fit in 63 bits.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

MAX_ORDER = 6
FALLBACK_DISCOUNT = 0.5  # used when a level has no singletons (the estimate would be 0)
_KEY_LIMIT = 2 ** 63  # keys are int64: the largest key V^n - 1 must stay below this
_ROWS_PER_CHUNK = 4096  # rows of a full [rows, V] distribution computed at once


# ----------------------------------------------------------------------------- counting

def estimate_discount(counts: np.ndarray) -> float:
    """Chen & Goodman's D = n1 / (n1 + 2 n2) from counts-of-counts, or the fallback without n1."""
    n1 = int(np.count_nonzero(counts == 1))
    n2 = int(np.count_nonzero(counts == 2))
    return n1 / (n1 + 2 * n2) if n1 else FALLBACK_DISCOUNT


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``values`` at each query key found in ``sorted_keys``; 0 where a key is absent."""
    if len(sorted_keys) == 0:
        return np.zeros(queries.shape, values.dtype)
    index = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return np.where(sorted_keys[index] == queries, values[index], 0)


@dataclasses.dataclass(frozen=True)
class CountTable:
    """The counts of one level's k-grams (raw or continuation) and their per-context sums."""
    length: int  # k: tokens per n-gram; the context is the first k - 1
    vocab_size: int
    keys: np.ndarray  # int64 [G], sorted distinct k-gram keys
    counts: np.ndarray  # float64 [G], their counts (all > 0)
    context_keys: np.ndarray  # int64 [C], sorted distinct context keys (key // V)
    context_totals: np.ndarray  # float64 [C], the sum of counts after each context
    context_types: np.ndarray  # float64 [C], N1+(h .): distinct tokens after each context
    discount: float

    @classmethod
    def build(cls, length: int, vocab_size: int, keys: np.ndarray, counts: np.ndarray,
              discount: float | None) -> "CountTable":
        """The table of sorted distinct ``keys`` with ``counts``; ``discount`` None = estimate."""
        counts = counts.astype(np.float64)
        context_keys, starts = np.unique(keys // vocab_size, return_index=True)
        totals = np.add.reduceat(counts, starts) if len(keys) else np.zeros(0)
        types = np.diff(np.append(starts, len(keys))).astype(np.float64)
        if discount is None:
            discount = estimate_discount(counts)
        return cls(length, vocab_size, keys, counts, context_keys, totals, types, float(discount))

    def interpolate(self, context_n: np.ndarray, next_nk: np.ndarray,
                    lower_nk: np.ndarray) -> np.ndarray:
        """P(next | context) at this level, interpolated with the lower level's ``lower_nk``.

        ``context_n`` holds context keys, ``next_nk`` candidate next tokens per row.
        """
        total_n = _lookup(self.context_keys, self.context_totals, context_n)
        types_n = _lookup(self.context_keys, self.context_types, context_n)
        counts_nk = _lookup(self.keys, self.counts, context_n[:, None] * self.vocab_size + next_nk)
        seen_n = total_n > 0
        kept_nk = np.maximum(counts_nk - self.discount, 0.0)
        mixed_nk = (kept_nk + self.discount * types_n[:, None] * lower_nk)
        return np.where(seen_n[:, None], mixed_nk / np.where(seen_n, total_n, 1.0)[:, None],
                        lower_nk)


def _check_key_range(vocab_size: int, order: int) -> None:
    if vocab_size ** order > _KEY_LIMIT:
        raise ValueError(f"an order-{order} n-gram over a vocabulary of {vocab_size} needs a key "
                         f"up to {vocab_size}^{order} - 1, which does not fit in 63 bits; "
                         f"lower the order (at most {_max_order_for(vocab_size)} for this "
                         f"vocabulary).")


def _max_order_for(vocab_size: int) -> int:
    order = 0
    while vocab_size ** (order + 1) <= _KEY_LIMIT:
        order += 1
    return order


def _as_pieces(tokens, vocab_size: int) -> list[np.ndarray]:
    """One int64 array per piece; n-grams are counted within a piece, never across two."""
    pieces = [tokens] if isinstance(tokens, np.ndarray) else list(tokens)
    arrays = [np.asarray(p).astype(np.int64, copy=False).ravel() for p in pieces]
    for array in arrays:
        if len(array) and (array.min() < 0 or array.max() >= vocab_size):
            raise ValueError(f"token ids must lie in [0, {vocab_size}); got ids from "
                             f"{array.min()} to {array.max()}.")
    return arrays


def _gram_keys(pieces: list[np.ndarray], order: int, vocab_size: int) -> list[np.ndarray]:
    """Keys of every k-gram occurrence inside the pieces, for k = 1 .. order."""
    per_length: list[list[np.ndarray]] = [[] for _ in range(order)]
    for piece in pieces:
        keys = piece
        for k in range(1, order + 1):
            if k > 1:
                keys = keys[:-1] * vocab_size + piece[k - 1:]
            if len(keys) == 0:
                break
            per_length[k - 1].append(keys)
    return [np.concatenate(keys) if keys else np.zeros(0, np.int64) for keys in per_length]


def _check_discount(discount: float | None) -> None:
    if discount is not None and not 0 < discount <= 1:
        raise ValueError(f"discount={discount!r} must lie in (0, 1] (None estimates it); above 1 "
                         f"a context would lose more mass than it passes to the lower level.")


# ----------------------------------------------------------------------------- model

@functools.lru_cache(maxsize=1)
def _jitted_sampler():
    import jax

    from lm.infer.sample import sample_logits
    return jax.jit(sample_logits, static_argnums=(2, 3))


class NGramLM:
    """An interpolated Kneser-Ney model; build it with :meth:`fit`.

    Contexts are int arrays [N, L] (or lists of token lists): the last ``order - 1`` tokens are
    used, and negative entries on the left mark missing tokens (a shorter context).
    """

    def __init__(self, order: int, vocab_size: int, raw: list[CountTable],
                 continuation: list[CountTable]):
        self.order = order
        self.vocab_size = vocab_size
        self.raw = raw  # raw[k - 1]: raw counts of k-grams, k = 1 .. order
        self.continuation = continuation  # continuation[k - 1]: k = 1 .. order - 1

    @classmethod
    def fit(cls, tokens: np.ndarray | Sequence[np.ndarray], order: int, vocab_size: int,
            discount: float | None = None) -> "NGramLM":
        """Counts ``tokens`` (one array, or several whose n-grams never straddle two)."""
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) \
                or not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order={order!r} must be an integer in 1..{MAX_ORDER}.")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
                or vocab_size < 1:
            raise ValueError(f"vocab_size={vocab_size!r} must be a positive integer.")
        order, vocab_size = int(order), int(vocab_size)
        _check_discount(discount)
        _check_key_range(vocab_size, order)
        gram_keys = _gram_keys(_as_pieces(tokens, vocab_size), order, vocab_size)
        distinct = [np.unique(keys, return_counts=True) for keys in gram_keys]
        raw = [CountTable.build(k, vocab_size, keys, counts, discount)
               for k, (keys, counts) in enumerate(distinct, start=1)]
        continuation = [cls._continuation_table(k, vocab_size, distinct[k][0], discount)
                        for k in range(1, order)]
        return cls(order, vocab_size, raw, continuation)

    @staticmethod
    def _continuation_table(length: int, vocab_size: int, longer_keys: np.ndarray,
                            discount: float | None) -> CountTable:
        """N1+(. g) for every k-gram g: how many distinct (k+1)-grams end with it."""
        suffixes = longer_keys % (vocab_size ** length)
        keys, counts = np.unique(suffixes, return_counts=True)
        return CountTable.build(length, vocab_size, keys, counts, discount)

    # ------------------------------------------------------------------------- properties

    @property
    def num_parameters(self) -> int:
        """Stored n-gram counts: raw counts of every order plus continuation counts."""
        return sum(len(t.keys) for t in self.raw + self.continuation)

    @property
    def discounts(self) -> dict[str, list[float]]:
        """Discount of each level, lowest first: raw and continuation counts."""
        return {"raw": [t.discount for t in self.raw],
                "continuation": [t.discount for t in self.continuation]}

    # ------------------------------------------------------------------------- scoring

    def log_probs(self, contexts) -> np.ndarray:
        """Natural-log next-token distributions [N, V] of a batch of contexts."""
        contexts_nl = self._context_array(contexts)
        out_nv = np.empty((len(contexts_nl), self.vocab_size))
        every_token = np.arange(self.vocab_size, dtype=np.int64)
        for start in range(0, len(contexts_nl), _ROWS_PER_CHUNK):
            rows = contexts_nl[start:start + _ROWS_PER_CHUNK]
            next_nv = np.broadcast_to(every_token, (len(rows), self.vocab_size))
            out_nv[start:start + len(rows)] = np.log(self._probabilities(rows, next_nv))
        return out_nv

    def token_log_probs(self, contexts, targets) -> np.ndarray:
        """Natural-log probability [N] of ``targets[i]`` after ``contexts[i]``."""
        contexts_nl = self._context_array(contexts)
        targets_n = np.asarray(targets, dtype=np.int64).reshape(-1)
        if targets_n.shape[0] != contexts_nl.shape[0]:
            raise ValueError(f"{contexts_nl.shape[0]} contexts but {targets_n.shape[0]} targets.")
        self._check_ids(targets_n, "targets")
        return np.log(self._probabilities(contexts_nl, targets_n[:, None])[:, 0])

    def _probabilities(self, contexts_nl: np.ndarray, next_nk: np.ndarray) -> np.ndarray:
        """P(next | context) [N, K], each row under the model of order (its length + 1)."""
        lengths_n = np.count_nonzero(contexts_nl >= 0, axis=1)
        out_nk = np.empty(next_nk.shape)
        width = contexts_nl.shape[1]
        for length in np.unique(lengths_n):
            rows = np.flatnonzero(lengths_n == length)
            out_nk[rows] = self._probabilities_of_length(
                contexts_nl[rows, width - length:], next_nk[rows])
        return out_nk

    def _probabilities_of_length(self, contexts_nm: np.ndarray,
                                 next_nk: np.ndarray) -> np.ndarray:
        """The order-(m + 1) model for full contexts of m tokens, built up from the uniform."""
        m = contexts_nm.shape[1]
        probs_nk = np.full(next_nk.shape, 1.0 / self.vocab_size)
        suffix_n = np.zeros(len(contexts_nm), np.int64)  # key of the last k - 1 context tokens
        for k in range(1, m + 2):
            if k > 1:
                suffix_n = suffix_n + contexts_nm[:, m - k + 1] * self.vocab_size ** (k - 2)
            table = self.raw[k - 1] if k == m + 1 else self.continuation[k - 1]
            probs_nk = table.interpolate(suffix_n, next_nk, probs_nk)
        return probs_nk

    def _context_array(self, contexts) -> np.ndarray:
        """int64 [N, order - 1]: the last order - 1 tokens, left-padded with -1."""
        width = self.order - 1
        if isinstance(contexts, np.ndarray) and contexts.ndim != 2:
            raise ValueError(f"contexts must be [N, L] token ids, got shape {contexts.shape}.")
        if isinstance(contexts, np.ndarray):
            array = contexts.astype(np.int64)[:, contexts.shape[1] - min(width, contexts.shape[1]):]
            array = np.pad(array, ((0, 0), (width - array.shape[1], 0)), constant_values=-1)
        else:
            rows = [list(c)[len(c) - min(width, len(c)):] for c in contexts]
            array = np.full((len(rows), width), -1, np.int64)
            for i, row in enumerate(rows):
                array[i, width - len(row):] = row
        array = np.where(array < 0, -1, array)
        present = array >= 0
        if width and np.any(present[:, :-1] & ~present[:, 1:]):
            raise ValueError("a context may only miss tokens on its left (negative ids first).")
        self._check_ids(array[present], "contexts")
        return array

    def _check_ids(self, ids: np.ndarray, what: str) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"{what} hold ids outside [0, {self.vocab_size}): "
                             f"{ids.min()} .. {ids.max()}.")

    # ------------------------------------------------------------------------- sampling

    def sample(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.8,
               top_k: int = 0, seed: int = 0) -> list[int]:
        """``max_new_tokens`` tokens after ``prompt_ids``, drawn by ``lm.infer.sample.sample_logits``
        (the Transformer's sampler) from the log-probabilities, with the key split per token as
        ``lm.infer.sample.generate`` does. ``top_k`` above the vocabulary means no cut."""
        import jax
        import jax.numpy as jnp

        if temperature < 0 or top_k < 0 or max_new_tokens < 0:
            raise ValueError("temperature, top_k and max_new_tokens must not be negative.")
        top_k = min(int(top_k), self.vocab_size)
        history = [int(t) for t in prompt_ids]
        self._check_ids(np.asarray(history, np.int64), "prompt_ids")
        sampler, rng = _jitted_sampler(), jax.random.key(seed)
        width = self.order - 1
        new_tokens: list[int] = []
        for _ in range(max_new_tokens):
            context = history[len(history) - min(width, len(history)):]
            logits_1v = jnp.asarray(self.log_probs([context]), jnp.float32)
            rng, sub = jax.random.split(rng)
            token = int(sampler(logits_1v, sub, float(temperature), top_k)[0])
            history.append(token)
            new_tokens.append(token)
        return new_tokens
