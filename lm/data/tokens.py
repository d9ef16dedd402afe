"""Tokens of a ``DataConfig``: its vocabulary, its splits as token streams, documents and packed
rows, tokenized once per process or memory-mapped from a pre-tokenized cache.

Sits on the base layer (``config``, ``windows``, ``mixture_spec``) and under every module that
builds batches (``batches``, ``mixture``, ``tasks``, ``cache``, ``objectives``, ``pipeline``);
it imports none of them, except ``tasks`` for the seqio backend's packed rows, loaded only then
because it imports TensorFlow. ``TokenCache`` reads the directories that ``lm.data.cache``
writes (``python -m lm.data.cache``).
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np

from lm.configlib import ConfigError
from lm.data import corpus as corpus_lib
from lm.data import mixture_spec
from lm.data import vocab as vocab_lib
from lm.data import windows as windows_lib
from lm.data.config import DataConfig

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
    return mixture_spec.parse_mixture(cfg.mixture).sources


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


# ----------------------------------------------------------------------------- token streams

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


def document_tokens(cfg: DataConfig, split: str) -> list[np.ndarray]:
    """Each document of the split (cut at the split boundary) encoded, followed by EOS."""
    vocab = vocabulary(cfg)
    documents = corpus_lib.split_documents(cfg.corpus, split, cfg.train_fraction)
    return [np.append(vocab.encode_array(d.text), vocab_lib.EOS_ID).astype(np.int32)
            for d in documents]


# ----------------------------------------------------------------------------- packed rows

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
        examples = [piece for doc in document_tokens(cfg, split)
                    for piece in windows_lib.chunk(doc, seq_len)]
        rows = windows_lib.pack_examples(examples, seq_len)
    for array in rows:
        array.setflags(write=False)  # shared by every batch of this process
    return rows


# ----------------------------------------------------------------------------- token cache

class TokenCache:
    """One split of a cache, memory-mapped."""

    def __init__(self, directory: str, split: str = "train"):
        path = os.path.join(directory, split)
        meta_path = os.path.join(path, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"no token cache at {path}: build it with "
                                    f"`python -m lm.data.cache --output={directory} ...`")
        with open(meta_path) as f:
            self.meta = json.load(f)
        load = lambda name: np.load(os.path.join(path, name), mmap_mode="r")  # noqa: E731
        self.tokens = load("tokens.npy")
        self.packed_targets = load("packed_targets.npy")
        self.packed_positions = load("packed_positions.npy")

    def window_batch(self, seed: int, rows_n: np.ndarray, seq_len: int) -> windows_lib.Batch:
        """nanoGPT windows for global rows ``rows_n`` (equal to the array backend's)."""
        windows = windows_lib.train_windows(self.tokens, seq_len, seed, rows_n)
        return windows_lib.windows_to_batch(windows.astype(np.int32))

    def packed_batch(self, rows_n: np.ndarray) -> windows_lib.Batch:
        """Packed rows ``rows_n`` (modulo the number of rows) with segment ids and positions."""
        index = rows_n % len(self.packed_targets)
        return windows_lib.packed_batch(np.asarray(self.packed_targets[index], np.int32),
                                        np.asarray(self.packed_positions[index], np.int32))


def _token_cache(cfg: DataConfig, split: str, packed: bool = False) -> TokenCache:
    """The cache of ``cfg.cache_dir`` after checking it was built for this data config."""
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
