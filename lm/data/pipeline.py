"""Input pipeline: host-local NumPy batches for language-model training and evaluation.

Every batch is a dict of five arrays of shape [batch, seq_len]:
  inputs (int32), targets (int32), weights (float32, 0 on padding),
  segment_ids (int32, 0 on padding), positions (int32, position inside the segment).

Backends (``config.data.backend``):
  'array'      the corpus split tokenized once into memory; no TensorFlow.
  'seqio'      the seqio tasks of ``lm.data.tasks``; gives the same batches as 'array'.
  'synthetic'  random tokens in [3, synthetic_vocab_size), no corpus read (benchmarks).

Unpacked training rows are nanoGPT's ``get_batch``: a window of seq_len + 1 tokens at a random
offset of the train split, inputs = window[:-1], targets = window[1:]. Global row ``j`` of the
training stream uses offset ``hash(seed, j) mod (n - seq_len)``, so batch ``i`` (rows
``i*B .. i*B+B-1``) depends only on (seed, i), a host computes only its own rows, and a resumed
run only needs the batch index. Evaluation uses ``eval_batches * B`` of the disjoint windows of
the validation split (stride seq_len), evenly spaced so that the estimate covers all of it.

With ``mixture`` set (``lm.data.mixture``), training rows come from several corpora at set
rates, in per-source epochs, and ``corpus`` is ignored; evaluation gives each source's batches
in turn. A char vocabulary is then the sorted characters of all the mixture's corpora.

With ``packing=True`` rows are packed documents instead (seqio ``LMFeatureConverter(pack=True)``
format): each document plus EOS is cut into chunks of at most seq_len tokens, chunks are packed
greedily into rows, and inputs restart from 0 at every segment. Training samples packed rows by
``hash(seed, j)``; evaluation takes evenly spaced rows of the packed validation split.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from lm.configlib import ConfigError, from_section
from lm.data import corpus as corpus_lib
from lm.data import vocab as vocab_lib

Batch = dict[str, np.ndarray]
BACKENDS = ("array", "seqio", "synthetic")
BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
_EVAL_KEY = 0x5EED_E7A1  # hash key of the synthetic evaluation batches (never a training seed)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    backend: str = "array"  # 'array' | 'seqio' | 'synthetic'
    corpus: str = "shakespeare"  # embedded name, .txt file or folder of .txt files
    vocab: str = "char"  # 'char' | 'sentencepiece'
    vocab_model: str = ""  # SentencePiece .model; '' = the shipped shakespeare_sp1024
    seq_len: int = 64  # tokens per row
    batch_size: int = 12  # global batch, summed over processes
    train_fraction: float = 0.9  # leading fraction of characters used for training
    eval_batches: int = 50  # global batches per evaluation
    packing: bool = False  # pack document chunks with segment ids instead of random windows
    synthetic_vocab_size: int = 256  # vocabulary of backend='synthetic'
    mixture: str = ""  # '' = one corpus; registered name ('gutenberg') or 'corpus:rate,...'
    mixture_temperature: float = 1.0  # rates ∝ size^(1/T) when the mixture gives no rates
    cache_dir: str = ""  # pre-tokenized cache (python -m lm.data.cache); '' = tokenize in memory
    prefetch: int = 2  # batches produced ahead on a background thread while training (0: none)
    # Objective (lm/data/objectives.py): causal_lm | prefix_lm | span_corruption | mlm.
    objective: str = "causal_lm"
    eval_objective: str = ""  # '' = objective; e.g. 'prefix_lm' scores every model on one task
    prefix_fraction: float = 0.5  # prefix_lm: share of each window that is the prefix
    noise_density: float = 0.15  # span_corruption: share of tokens hidden
    mean_noise_span_length: float = 3.0  # span_corruption
    mlm_probability: float = 0.15  # mlm: share of positions predicted

    @classmethod
    def from_config(cls, section: Any) -> "DataConfig":
        return from_section(cls, section, "config.data")

    def __post_init__(self):
        _validate(self)

    @property
    def model_path(self) -> str:
        """The SentencePiece model file this config uses."""
        return self.vocab_model or str(vocab_lib.DEFAULT_SENTENCEPIECE_MODEL)


def _check_choice(cfg: DataConfig, name: str, choices: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in choices:
        raise ConfigError(f"config.data.{name}={getattr(cfg, name)!r} is not one of "
                          f"{', '.join(map(repr, choices))}.")


def _check_positive_int(cfg: DataConfig, name: str, minimum: int = 1) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"config.data.{name}={value!r} must be an integer >= {minimum}.")


def _validate(cfg: DataConfig) -> None:
    _check_choice(cfg, "backend", BACKENDS)
    _check_choice(cfg, "vocab", vocab_lib.KINDS)
    for name in ("seq_len", "batch_size", "eval_batches"):
        _check_positive_int(cfg, name)
    _check_positive_int(cfg, "prefetch", minimum=0)
    _check_positive_int(cfg, "synthetic_vocab_size", minimum=vocab_lib.NUM_RESERVED + 1)
    if not isinstance(cfg.corpus, str) or not cfg.corpus:
        raise ConfigError("config.data.corpus must name an embedded corpus "
                          f"({', '.join(corpus_lib.EMBEDDED)}) or a .txt file or folder.")
    if not isinstance(cfg.train_fraction, (int, float)) or not 0 < cfg.train_fraction < 1:
        raise ConfigError(f"config.data.train_fraction={cfg.train_fraction!r} must lie strictly "
                          "between 0 and 1 (e.g. 0.9).")
    if cfg.vocab_model and cfg.vocab != "sentencepiece":
        raise ConfigError("config.data.vocab_model is only read with config.data.vocab="
                          "'sentencepiece'; set one or clear the other.")
    if not isinstance(cfg.packing, bool):
        raise ConfigError(f"config.data.packing={cfg.packing!r} must be True or False.")
    if cfg.packing and cfg.backend == "synthetic":
        raise ConfigError("config.data.packing needs documents; use backend 'array' or 'seqio', "
                          "or set packing=False for synthetic data.")
    _validate_mixture(cfg)
    _validate_objective(cfg)
    if cfg.cache_dir and (cfg.backend != "array" or cfg.mixture):
        raise ConfigError("config.data.cache_dir is read by backend 'array' without a mixture; "
                          "clear config.data.cache_dir or set backend='array'.")


def _validate_objective(cfg: DataConfig) -> None:
    from lm.data import objectives

    objectives.validate(cfg.objective, "", "config.data.objective")
    if cfg.eval_objective:
        objectives.validate(cfg.eval_objective, "", "config.data.eval_objective")
    for name in ("prefix_fraction", "noise_density", "mlm_probability"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"config.data.{name}={value!r} must lie strictly between 0 and 1.")
    if not isinstance(cfg.mean_noise_span_length, (int, float)) or cfg.mean_noise_span_length < 1:
        raise ConfigError(f"config.data.mean_noise_span_length={cfg.mean_noise_span_length!r} "
                          "must be >= 1.")
    if cfg.packing and {cfg.objective, cfg.eval_objective} - {"causal_lm", ""}:
        raise ConfigError(f"config.data.packing=True packs documents for causal_lm; objective "
                          f"{cfg.objective!r} converts unpacked windows: set packing=False.")


def _validate_mixture(cfg: DataConfig) -> None:
    if not isinstance(cfg.mixture_temperature, (int, float)) or not cfg.mixture_temperature > 0:
        raise ConfigError(f"config.data.mixture_temperature={cfg.mixture_temperature!r} must be "
                          "a positive number (1 = rates follow sizes).")
    if not cfg.mixture:
        return
    if cfg.backend != "array":
        raise ConfigError(f"config.data.mixture needs backend 'array', not {cfg.backend!r}; the "
                          "seqio mixture is lm.data.tasks.register_mixture.")
    from lm.data import mixture as mixture_lib  # imports this module

    mixture_lib.parse_mixture(cfg.mixture)  # raises a ConfigError naming the field


# ----------------------------------------------------------------------------- vocabulary

def vocabulary(cfg: DataConfig) -> vocab_lib.Vocabulary:
    """The vocabulary of ``cfg`` (decode samples with ``vocabulary(cfg).decode(ids)``)."""
    if cfg.backend == "synthetic":
        return vocab_lib.SyntheticVocabulary(cfg.synthetic_vocab_size)
    model = cfg.model_path if cfg.vocab == "sentencepiece" else ""
    return _cached_vocabulary(cfg.vocab, vocab_corpora(cfg), model)


def vocab_corpora(cfg: DataConfig) -> tuple[str, ...]:
    """The corpora whose characters make a char vocabulary: all of a mixture's, or the one."""
    if not cfg.mixture:
        return (cfg.corpus,)
    from lm.data import mixture as mixture_lib

    return mixture_lib.parse_mixture(cfg.mixture).sources


def vocab_size(cfg: DataConfig) -> int:
    """The vocabulary size plus the objective's sentinel / MASK ids (the model may pad it)."""
    from lm.data import objectives

    extra = max(objectives.objective_config(cfg, 0, name).extra_ids
                for name in (cfg.objective, cfg.eval_objective or cfg.objective))
    return vocabulary(cfg).vocab_size + extra


@functools.lru_cache(maxsize=16)
def _cached_vocabulary(kind: str, corpora: tuple[str, ...],
                       model_path: str) -> vocab_lib.Vocabulary:
    if kind == "char" and len(corpora) > 1:
        return vocab_lib.CharVocabulary.from_text(
            "".join(corpus_lib.corpus_text(c) for c in corpora))
    try:
        return vocab_lib.make_vocabulary(kind, corpora[0], model_path or None)
    except corpus_lib.CorpusError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


# ----------------------------------------------------------------------------- tokens

def split_tokens(cfg: DataConfig, split: str) -> np.ndarray:
    """The whole split as one token array, encoded once per process (read-only), or
    memory-mapped from ``cfg.cache_dir``."""
    if cfg.cache_dir:
        return _token_cache(cfg, split).tokens
    return _cached_split_tokens(cfg.corpus, split, cfg.train_fraction, cfg.vocab, cfg.model_path,
                                vocab_corpora(cfg))


@functools.lru_cache(maxsize=16)
def _cached_split_tokens(corpus, split, train_fraction, vocab_kind, model_path,
                         corpora) -> np.ndarray:
    text = corpus_lib.split_text(corpus, split, train_fraction)
    vocab = _cached_vocabulary(vocab_kind, corpora, model_path if vocab_kind != "char" else "")
    tokens = vocab.encode_array(text).astype(np.int32)
    tokens.setflags(write=False)
    return tokens


def _token_cache(cfg: DataConfig, split: str, packed: bool = False):
    """The cache of ``cfg.cache_dir`` after checking it was built for this data config."""
    from lm.data.cache import TokenCache
    try:
        cached = TokenCache(cfg.cache_dir, split)
    except FileNotFoundError as e:
        raise ConfigError(f"config.data.cache_dir: {e}") from None
    expected = {"corpus": cfg.corpus, "vocab": cfg.vocab, "vocab_model": cfg.vocab_model,
                "train_fraction": cfg.train_fraction}
    if packed:
        expected["seq_len"] = cfg.seq_len
    wrong = {k: (cached.meta.get(k), v) for k, v in expected.items() if cached.meta.get(k) != v}
    if wrong:
        raise ConfigError(f"config.data.cache_dir={cfg.cache_dir!r} was built for another data "
                          "config (" + "; ".join(f"{k}: cache {c!r}, config {v!r}"
                                                 for k, (c, v) in wrong.items())
                          + "); rebuild it with python -m lm.data.cache or clear cache_dir.")
    return cached


def document_tokens(cfg: DataConfig, split: str) -> list[np.ndarray]:
    """Each document of the split (cut at the split boundary) encoded, followed by EOS."""
    vocab = vocabulary(cfg)
    documents = corpus_lib.split_documents(cfg.corpus, split, cfg.train_fraction)
    return [np.append(vocab.encode_array(d.text), vocab_lib.EOS_ID).astype(np.int32)
            for d in documents]


# ----------------------------------------------------------------------------- randomness

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x_u64: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijective 64-bit mix, vectorized."""
    z = x_u64.astype(np.uint64)
    with np.errstate(over="ignore"):  # the arithmetic is meant to wrap modulo 2**64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hashed_ints(seed: int, index_n: np.ndarray, high: int) -> np.ndarray:
    """A uniform draw in [0, high) for each index: counter-based, so any index is O(1)."""
    key = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
    with np.errstate(over="ignore"):
        counters = key + (np.asarray(index_n, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
    # The modulo bias is below high / 2**64, far below anything measurable.
    return (_splitmix64(counters) % np.uint64(high)).astype(np.int64)


# ----------------------------------------------------------------------------- windows

def _check_window_fits(tokens: np.ndarray, seq_len: int, split: str) -> None:
    if len(tokens) < seq_len + 1:
        raise ConfigError(f"the {split} split has {len(tokens)} tokens, fewer than "
                          f"config.data.seq_len + 1 = {seq_len + 1}; lower seq_len or use a "
                          f"larger corpus.")


def train_windows(tokens: np.ndarray, seq_len: int, seed: int, rows_n: np.ndarray) -> np.ndarray:
    """Windows [len(rows), seq_len + 1] of the train stream rows ``rows_n`` (nanoGPT offsets)."""
    _check_window_fits(tokens, seq_len, "train")
    offsets_n = hashed_ints(seed, rows_n, len(tokens) - seq_len)
    return tokens[offsets_n[:, None] + np.arange(seq_len + 1)]


def validation_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """All disjoint windows [K, seq_len + 1] of the split: window k starts at k * seq_len."""
    _check_window_fits(tokens, seq_len, "validation")
    num_windows = (len(tokens) - 1) // seq_len
    return tokens[np.arange(num_windows)[:, None] * seq_len + np.arange(seq_len + 1)]


def evenly_spaced(num_available: int, num_wanted: int) -> np.ndarray:
    """``num_wanted`` indices spread evenly over [0, num_available), ends included."""
    return np.round(np.linspace(0, num_available - 1, num_wanted)).astype(np.int64)


def windows_to_batch(windows_bt1: np.ndarray) -> Batch:
    """nanoGPT's (x, y) = (window[:-1], window[1:]); every token is real, one segment per row."""
    batch, length = windows_bt1.shape[0], windows_bt1.shape[1] - 1
    return {
        "inputs": np.ascontiguousarray(windows_bt1[:, :-1], dtype=np.int32),
        "targets": np.ascontiguousarray(windows_bt1[:, 1:], dtype=np.int32),
        "weights": np.ones((batch, length), np.float32),
        "segment_ids": np.ones((batch, length), np.int32),
        "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
    }


# ----------------------------------------------------------------------------- packing

def pack_examples(examples: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Packs token sequences into rows like seqio's ``trim_and_pack_dataset`` (TF ops).

    Examples are trimmed to ``length`` and taken in groups of ``length``; inside a group each
    example joins the current row if it fits, else the row is closed; a group ends its last row.
    Returns targets [rows, length] and positions [rows, length] (0 on padding).
    """
    targets_rows, positions_rows = [], []
    for start in range(0, len(examples), length):
        row: list[np.ndarray] = []
        used = 0  # tokens in the open row
        for example in examples[start:start + length]:
            example = example[:length]
            if used + len(example) > length:
                _close_row(row, length, targets_rows, positions_rows)
                row, used = [], 0
            row.append(example)
            used += len(example)
        _close_row(row, length, targets_rows, positions_rows)
    return np.stack(targets_rows), np.stack(positions_rows)


def _close_row(row, length, targets_rows, positions_rows) -> None:
    targets = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    tokens = np.concatenate(row) if row else np.zeros(0, np.int32)
    targets[:len(tokens)] = tokens
    if row:
        positions[:len(tokens)] = np.concatenate([np.arange(len(e)) for e in row])
    targets_rows.append(targets)
    positions_rows.append(positions)


def chunk(tokens: np.ndarray, length: int) -> list[np.ndarray]:
    """Consecutive pieces of at most ``length`` tokens."""
    return [tokens[i:i + length] for i in range(0, len(tokens), length)]


def packed_batch(targets_bt: np.ndarray, positions_bt: np.ndarray) -> Batch:
    """Inputs, weights and segment ids of packed rows (seqio ``LMFeatureConverter`` rules)."""
    real_bt = targets_bt != vocab_lib.PAD_ID
    segment_ids_bt = np.cumsum(positions_bt == 0, axis=1, dtype=np.int32) * real_bt
    previous_segment_bt = np.pad(segment_ids_bt[:, :-1], ((0, 0), (1, 0)))
    shifted_bt = np.pad(targets_bt[:, :-1], ((0, 0), (1, 0)))  # BOS is 0
    return {
        "inputs": np.where(segment_ids_bt == previous_segment_bt, shifted_bt, 0).astype(np.int32),
        "targets": targets_bt.astype(np.int32),
        "weights": real_bt.astype(np.float32),
        "segment_ids": segment_ids_bt.astype(np.int32),
        "positions": positions_bt.astype(np.int32),
    }


def packed_rows(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, positions) of every packed row of the split, built once per process, or
    memory-mapped from ``cfg.cache_dir``."""
    if cfg.cache_dir:
        cached = _token_cache(cfg, split, packed=True)
        return cached.packed_targets, cached.packed_positions
    return _cached_packed_rows(cfg.corpus, split, cfg.train_fraction, cfg.vocab,
                               cfg.vocab_model, cfg.seq_len, cfg.backend, cfg.mixture)


@functools.lru_cache(maxsize=8)
def _cached_packed_rows(corpus, split, train_fraction, vocab, vocab_model, seq_len, backend,
                        mixture):
    cfg = DataConfig(corpus=corpus, train_fraction=train_fraction, vocab=vocab,
                     vocab_model=vocab_model, seq_len=seq_len, backend=backend, packing=True,
                     mixture=mixture)
    if not corpus_lib.split_text(corpus, split, train_fraction):
        raise ConfigError(f"the {split} split of {corpus!r} is empty; adjust "
                          f"config.data.train_fraction={train_fraction}.")
    if backend == "seqio":
        from lm.data import tasks  # TensorFlow only on request

        rows = tasks.packed_rows(cfg, split)
    else:
        examples = [c for doc in document_tokens(cfg, split) for c in chunk(doc, seq_len)]
        rows = pack_examples(examples, seq_len)
    for array in rows:
        array.setflags(write=False)  # shared by every batch of this process
    return rows


# ----------------------------------------------------------------------------- row sources

def _host_rows(cfg: DataConfig, batch_index: int, process_index: int,
               process_count: int) -> np.ndarray:
    """Global row ids of this host's slice of global batch ``batch_index``."""
    per_host = cfg.batch_size // process_count
    start = batch_index * cfg.batch_size + process_index * per_host
    return np.arange(start, start + per_host, dtype=np.int64)


def _synthetic_rows(cfg: DataConfig, seed: int, rows_n: np.ndarray) -> Batch:
    length = cfg.seq_len + 1
    cells_nl = rows_n[:, None] * length + np.arange(length)
    high = cfg.synthetic_vocab_size - vocab_lib.NUM_RESERVED
    tokens_nl = vocab_lib.NUM_RESERVED + hashed_ints(seed, cells_nl, high)
    return windows_to_batch(tokens_nl.astype(np.int32))


def _train_row_fn(cfg: DataConfig, seed: int) -> Callable[[np.ndarray], Batch]:
    """Global train row ids -> batch (all backends but unpacked 'seqio', which streams)."""
    if cfg.backend == "synthetic":
        return functools.partial(_synthetic_rows, cfg, seed)
    if cfg.packing:
        targets_rt, positions_rt = packed_rows(cfg, "train")

        def packed(rows_n):
            picked_n = hashed_ints(seed, rows_n, len(targets_rt))
            return packed_batch(targets_rt[picked_n], positions_rt[picked_n])

        return packed
    tokens = split_tokens(cfg, "train")
    return lambda rows_n: windows_to_batch(train_windows(tokens, cfg.seq_len, seed, rows_n))


def _eval_global_batch(cfg: DataConfig, num_rows: int) -> Callable[[np.ndarray], Batch]:
    """Row ids among ``num_rows`` evaluation rows -> batch."""
    if cfg.backend == "synthetic":
        return functools.partial(_synthetic_rows, cfg, _EVAL_KEY)
    if cfg.packing:
        targets_rt, positions_rt = packed_rows(cfg, "validation")
        picked_n = evenly_spaced(len(targets_rt), num_rows)
        return lambda rows_n: packed_batch(targets_rt[picked_n[rows_n]],
                                           positions_rt[picked_n[rows_n]])
    windows_kt = _validation_windows_for(cfg)
    picked_n = evenly_spaced(len(windows_kt), num_rows)
    return lambda rows_n: windows_to_batch(windows_kt[picked_n[rows_n]])


def _validation_windows_for(cfg: DataConfig) -> np.ndarray:
    if cfg.backend == "seqio":
        from lm.data import tasks  # TensorFlow only on request

        return tasks.validation_windows(cfg)
    return validation_windows(split_tokens(cfg, "validation"), cfg.seq_len)


# ----------------------------------------------------------------------------- iterators

class BatchIterator:
    """Infinite iterator over this host's training batches, resumable by batch index."""

    def __init__(self, batch_fn: Callable[[int], Batch], seed: int):
        self._batch_fn = batch_fn  # global batch index -> this host's batch
        self._seed = seed
        self.batch_index = 0  # index of the next batch

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> Batch:
        batch = self._batch_fn(self.batch_index)
        self.batch_index += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serializable position; store it in the checkpoint."""
        return {"batch_index": self.batch_index, "seed": self._seed}

    def set_state(self, state: dict) -> None:
        if state.get("seed", self._seed) != self._seed:
            raise ValueError(f"data iterator state was saved with seed {state['seed']} but this "
                             f"iterator uses seed {self._seed}; resume with the same seed.")
        self.batch_index = int(state["batch_index"])


def _check_processes(cfg: DataConfig, process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, {process_count}).")
    if cfg.batch_size % process_count:
        raise ConfigError(f"config.data.batch_size={cfg.batch_size} does not split across "
                          f"{process_count} processes; use a multiple of {process_count}.")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the data seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def make_train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                        process_count: int = 1):
    """Infinite training batches: this host's rows of each global batch of ``cfg.batch_size``.

    A ``BatchIterator``, or a ``mixture.MixtureIterator`` (same interface) with a mixture.
    """
    seed = _check_seed(seed)
    _check_processes(cfg, process_index, process_count)
    if cfg.mixture:
        from lm.data import mixture as mixture_lib

        return mixture_lib.MixtureIterator(cfg, seed, process_index, process_count)
    if cfg.backend == "seqio" and not cfg.packing:
        from lm.data import tasks  # TensorFlow only on request

        return BatchIterator(tasks.train_batch_fn(cfg, seed, process_index, process_count), seed)
    row_fn = _train_row_fn(cfg, seed)
    return BatchIterator(
        lambda i: row_fn(_host_rows(cfg, i, process_index, process_count)), seed)


def make_eval_batches(cfg: DataConfig, process_index: int = 0,
                      process_count: int = 1) -> list[Batch]:
    """``cfg.eval_batches`` deterministic validation batches (this host's rows of each).

    With a mixture: ``cfg.eval_batches`` of each source in turn, so every source weighs the
    same; ``mixture.source_eval_batches`` gives them by source.
    """
    if cfg.mixture:
        from lm.data import mixture as mixture_lib

        per_source = mixture_lib.source_eval_batches(cfg, process_index, process_count)
        return [batch for batches in per_source.values() for batch in batches]
    return corpus_eval_batches(cfg, process_index, process_count)


def corpus_eval_batches(cfg: DataConfig, process_index: int = 0,
                        process_count: int = 1) -> list[Batch]:
    """The validation batches of ``cfg.corpus`` alone (a mixture's source included)."""
    _check_processes(cfg, process_index, process_count)
    batch_fn = _eval_global_batch(cfg, cfg.eval_batches * cfg.batch_size)
    return [batch_fn(_host_rows(cfg, i, process_index, process_count))
            for i in range(cfg.eval_batches)]
