"""Training objectives as feature conversion of token windows (T5's terms).

Every objective starts from the same rows the causal LM reads (a window of seq_len + 1 tokens:
``inputs`` = window[:-1], ``targets`` = window[1:]) and rewrites them:

  causal_lm        unchanged: predict every next token.
  prefix_lm        the first ``prefix_fraction`` of the window is the prefix, the rest the
                   target; the loss covers the target tokens only.
  span_corruption  T5: ``noise_density`` of the tokens, in spans of mean length
                   ``mean_noise_span_length``, are replaced by one sentinel per span in the
                   input; the target lists each sentinel followed by the tokens it hid.
  mlm              BERT: ``mlm_probability`` of the positions are chosen; 80% of them become
                   MASK, 10% a random token, 10% stay; the loss covers the chosen positions.

How an (input, target) pair becomes model features depends on the architecture:
decoder-only models read ``input ++ target`` as one sequence with ``bidirectional`` marking the
prefix (a causal decoder ignores it), an encoder-decoder reads the input with its encoder and
the target with its decoder (``encoder_*`` fields; decoder inputs are the targets shifted right
behind PAD = 0, T5's start token). Sentinels and MASK are ids appended after the vocabulary.

The random choices of a row depend only on (seed, the row's tokens), so converted batches are as
deterministic and resumable as the windows they come from.

A leaf of ``lm.data`` built on ``config``, ``tokens``, ``vocab`` and ``windows``; the trainer
converts the batches of whichever backend ``lm.data.pipeline`` picked. ``OBJECTIVES``, ``FITS``
and ``validate`` (``config.validate_objective``) live in ``lm.data.config``, so that a
``DataConfig`` checks its objective without importing this module, and are re-exported here.
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from lm.data import vocab as vocab_lib
# Re-exported: the objective names and which architectures they fit are checked with the config.
from lm.data.config import FITS, OBJECTIVES, DataConfig  # noqa: F401
from lm.data.config import validate_objective as validate  # noqa: F401
from lm.data.tokens import vocabulary
from lm.data.windows import Batch

EVAL_SEED = 0x0B1E_C7 + 1  # row randomness of evaluation batches (never a training seed)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    objective: str = "causal_lm"
    prefix_fraction: float = 0.5
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    mlm_probability: float = 0.15
    seq_len: int = 64
    base_vocab_size: int = 0

    @property
    def window(self) -> int:
        return self.seq_len + 1

    @property
    def prefix_length(self) -> int:
        return int(min(max(round(self.prefix_fraction * self.window), 1), self.window - 1))

    @property
    def noise_tokens(self) -> int:
        return int(min(max(round(self.window * self.noise_density), 1), self.window - 1))

    @property
    def noise_spans(self) -> int:
        spans = max(round(self.noise_tokens / self.mean_noise_span_length), 1)
        return int(min(spans, self.noise_tokens, self.window - self.noise_tokens))

    @property
    def extra_ids(self) -> int:
        """Ids appended after the vocabulary: one sentinel per noise span, or MASK."""
        return {"span_corruption": self.noise_spans, "mlm": 1}.get(self.objective, 0)


def feature_length(cfg: ObjectiveConfig, arch: str) -> int:
    """The longest sequence a model reads for this objective: decoder-only models read
    ``input ++ target`` (minus one), an encoder-decoder the longer of the two."""
    w, p, noise, spans = cfg.window, cfg.prefix_length, cfg.noise_tokens, cfg.noise_spans
    if cfg.objective in ("causal_lm", "mlm"):
        return cfg.seq_len
    pair = (p, w - p) if cfg.objective == "prefix_lm" else (w - noise + spans, noise + spans)
    return max(pair) if arch == "encoder_decoder" else sum(pair) - 1


def objective_config(cfg, base_vocab_size: int, objective: str = "") -> ObjectiveConfig:
    """The objective settings of a DataConfig (``objective`` defaults to the training one)."""
    return ObjectiveConfig(objective=objective or cfg.objective, prefix_fraction=cfg.prefix_fraction,
                           noise_density=cfg.noise_density,
                           mean_noise_span_length=cfg.mean_noise_span_length,
                           mlm_probability=cfg.mlm_probability, seq_len=cfg.seq_len,
                           base_vocab_size=base_vocab_size)


def vocab_size(cfg: DataConfig) -> int:
    """The vocabulary size plus the objectives' sentinel / MASK ids (the model may pad it)."""
    extra = max(objective_config(cfg, 0, name).extra_ids
                for name in (cfg.objective, cfg.eval_objective or cfg.objective))
    return vocabulary(cfg).vocab_size + extra


def row_rng(seed: int, row: np.ndarray) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(row).tobytes())])


# ----------------------------------------------------------------------------- one row


def random_spans_noise_mask(length: int, noise_tokens: int, spans: int,
                            rng: np.random.Generator) -> np.ndarray:
    """T5's ``random_spans_noise_mask``: ``spans`` noise spans of random positive lengths that
    sum to ``noise_tokens``, interleaved with as many non-noise spans; starts with non-noise."""
    def segment(total: int) -> np.ndarray:
        cuts = np.sort(rng.choice(np.arange(1, total), spans - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [total]]))
    noise, keep = segment(noise_tokens), segment(length - noise_tokens)
    lengths = np.stack([keep, noise], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], spans), lengths)


def span_corruption_pair(window: np.ndarray, cfg: ObjectiveConfig,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(input, target): noise spans become sentinels in the input; the target is each sentinel
    followed by the tokens it replaced. Lengths are fixed by the config."""
    noise = random_spans_noise_mask(len(window), cfg.noise_tokens, cfg.noise_spans, rng)
    starts = noise & ~np.concatenate([[False], noise[:-1]])
    span_index = np.cumsum(starts) - 1
    sentinel = (cfg.base_vocab_size + span_index).astype(window.dtype)
    inputs = np.where(starts, sentinel, window)[~noise | starts]
    targets = np.concatenate([[cfg.base_vocab_size + s, *window[noise & (span_index == s)]]
                              for s in range(cfg.noise_spans)]).astype(window.dtype)
    return inputs, targets


def mlm_row(tokens: np.ndarray, cfg: ObjectiveConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted tokens, chosen positions as 0/1)."""
    count = int(min(max(round(cfg.mlm_probability * len(tokens)), 1), len(tokens)))
    chosen = rng.choice(len(tokens), count, replace=False)
    corrupted = tokens.copy()
    action = rng.random(count)
    mask_id = cfg.base_vocab_size
    random_tokens = rng.integers(vocab_lib.NUM_RESERVED, cfg.base_vocab_size, count)
    corrupted[chosen] = np.where(action < 0.8, mask_id,
                                 np.where(action < 0.9, random_tokens, tokens[chosen]))
    weights = np.zeros(len(tokens), np.float32)
    weights[chosen] = 1.0
    return corrupted, weights


# ----------------------------------------------------------------------------- batches


def _decoder_only(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    """``input ++ target`` read as one sequence: prefix = the input, loss on the target."""
    sequences = np.stack([np.concatenate(pair) for pair in pairs]).astype(np.int32)
    prefix = len(pairs[0][0])
    b, t = sequences.shape[0], sequences.shape[1] - 1
    position = np.arange(t)
    return {"inputs": sequences[:, :-1], "targets": sequences[:, 1:],
            "weights": np.broadcast_to((position >= prefix - 1).astype(np.float32), (b, t)).copy(),
            "segment_ids": np.ones((b, t), np.int32),
            "positions": np.broadcast_to(position.astype(np.int32), (b, t)).copy(),
            "bidirectional": np.broadcast_to((position < prefix).astype(np.int32), (b, t)).copy()}


def _encoder_decoder(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    inputs = np.stack([p[0] for p in pairs]).astype(np.int32)
    targets = np.stack([p[1] for p in pairs]).astype(np.int32)
    (b, s), t = inputs.shape, targets.shape[1]
    shifted = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_inputs": inputs, "encoder_segment_ids": np.ones((b, s), np.int32),
            "encoder_positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
            "inputs": shifted, "targets": targets, "weights": np.ones((b, t), np.float32),
            "segment_ids": np.ones((b, t), np.int32),
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()}


def convert(batch: Batch, cfg: ObjectiveConfig, arch: str, seed: int) -> Batch:
    """A causal-LM window batch rewritten for ``cfg.objective`` and ``arch``."""
    if cfg.objective == "causal_lm":
        return batch
    windows = np.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)
    if cfg.objective == "mlm":
        rows = [mlm_row(w[:-1], cfg, row_rng(seed, w)) for w in windows]
        out = dict(batch)
        out["inputs"] = np.stack([r[0] for r in rows]).astype(np.int32)
        out["targets"] = batch["inputs"]
        out["weights"] = np.stack([r[1] for r in rows])
        return out
    if cfg.objective == "prefix_lm":
        p = cfg.prefix_length
        pairs = [(w[:p], w[p:]) for w in windows]
    else:
        pairs = [span_corruption_pair(w, cfg, row_rng(seed, w)) for w in windows]
    return _encoder_decoder(pairs) if arch == "encoder_decoder" else _decoder_only(pairs)


class ConvertedIterator:
    """Training batches of another iterator, converted; its state is the inner iterator's."""

    def __init__(self, inner, fn):
        self._inner, self._fn = inner, fn

    def __iter__(self) -> "ConvertedIterator":
        return self

    def __next__(self) -> Batch:
        return self._fn(next(self._inner))

    def get_state(self) -> dict:
        return self._inner.get_state()

    def set_state(self, state: dict) -> None:
        self._inner.set_state(state)


def train_iterator(iterator, cfg, arch: str, seed: int):
    """``iterator``'s window batches converted for the training objective and ``arch``."""
    if cfg.objective == "causal_lm":
        return iterator
    objective = objective_config(cfg, vocabulary(cfg).vocab_size)
    return ConvertedIterator(iterator, lambda batch: convert(batch, objective, arch, seed))


def eval_batches(batches: list[Batch], cfg, arch: str) -> list[Batch]:
    """Validation window batches converted for the evaluation objective and ``arch``."""
    name = cfg.eval_objective or cfg.objective
    if name == "causal_lm":
        return batches
    objective = objective_config(cfg, vocabulary(cfg).vocab_size, name)
    return [convert(batch, objective, arch, EVAL_SEED) for batch in batches]
