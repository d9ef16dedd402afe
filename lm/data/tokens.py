"""Tokens of a ``DataConfig``: its vocabulary, and its splits as token streams, documents and
packed rows, tokenized in memory once per process.

A leaf of ``lm.data``: it imports ``config``, ``corpus``, ``vocab``, ``mixture_spec`` and
``windows``, never a backend. The array and mixture backends read their arrays here, the seqio
backend its vocabulary and token streams, and the cache builder what it writes to disk.
"""
from __future__ import annotations

import functools

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
    """The whole split as one token array, encoded once per process (read-only)."""
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

def check_split_has_text(cfg: DataConfig, split: str) -> None:
    """Raises a ConfigError naming the fix when the split of ``cfg.corpus`` is empty."""
    if not corpus_lib.split_text(cfg.corpus, split, cfg.train_fraction):
        raise ConfigError(f"the {split} split of {cfg.corpus!r} is empty; adjust "
                          f"config.data.train_fraction={cfg.train_fraction}.")


def packed_rows(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, positions) of every packed row of the split, packed in NumPy once per
    process (read-only)."""
    return _cached_packed_rows(cfg.corpus, split, cfg.train_fraction, cfg.vocab,
                               cfg.vocab_model, cfg.seq_len, cfg.mixture)


@functools.lru_cache(maxsize=8)
def _cached_packed_rows(corpus, split, train_fraction, vocab, vocab_model, seq_len, mixture):
    cfg = DataConfig(corpus=corpus, train_fraction=train_fraction, vocab=vocab,
                     vocab_model=vocab_model, seq_len=seq_len, packing=True, mixture=mixture)
    check_split_has_text(cfg, split)
    examples = [piece for doc in document_tokens(cfg, split)
                for piece in windows_lib.chunk(doc, seq_len)]
    rows = windows_lib.pack_examples(examples, seq_len)
    for array in rows:
        array.setflags(write=False)  # shared by every batch of this process
    return rows
