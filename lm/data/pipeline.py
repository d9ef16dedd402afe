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

Layout of ``lm.data``: leaves, backends that import only leaves, and this dispatcher.
  leaves    documents (``Document``, ``CorpusError``), sources and corpus (text), vocab,
            mixture_spec (mixture strings and rates), config (``DataConfig``), windows
            (windows, packing, hashing, ``Batch``), batches (rows into host batches, the
            resumable iterator), tokens (a config's vocabulary and token arrays), objectives
            (feature conversion), features, loader, seqio_vocab, tokenizer.
  backends  array (in memory), cache (memory-mapped, ``python -m lm.data.cache``), mixture
            (several corpora at set rates), synthetic (random tokens), tasks (seqio; imports
            TensorFlow). Each has ``train_iterator`` and ``eval_batches``.
  pipeline  this module: picks the backend of a config and sizes the vocabulary for its
            objectives; it re-exports the names callers read as ``pipeline.<name>``.
Leaves import only leaves, backends only leaves, and no module of ``lm.data`` imports this one:
no import cycle, counting imports inside functions (tests/test_import_graph.py). This module
imports ``tasks`` only for backend 'seqio', so that no other backend loads TensorFlow.
"""
from __future__ import annotations

import numpy as np

from lm.configlib import ConfigError
from lm.data import array, cache, synthetic
from lm.data import mixture as mixture_lib
from lm.data import tokens as tokens_lib
from lm.data.batches import BatchIterator, check_processes, check_seed
from lm.data.config import BACKENDS, DataConfig
from lm.data.objectives import vocab_size
from lm.data.tokens import document_tokens, vocab_corpora, vocabulary
from lm.data.windows import (BATCH_KEYS, Batch, chunk, evenly_spaced, hashed_ints, pack_examples,
                             packed_batch, train_windows, validation_windows, windows_to_batch)

__all__ = [
    "BACKENDS", "BATCH_KEYS", "Batch", "BatchIterator", "ConfigError", "DataConfig", "chunk",
    "document_tokens", "evenly_spaced", "hashed_ints", "make_eval_batches",
    "make_train_iterator", "pack_examples", "packed_batch", "packed_rows", "split_tokens",
    "train_windows", "validation_windows", "vocab_corpora", "vocab_size", "vocabulary",
    "windows_to_batch",
]


def backend_of(cfg: DataConfig):
    """The module that builds ``cfg``'s batches (``train_iterator``, ``eval_batches``)."""
    if cfg.backend == "synthetic":
        return synthetic
    if cfg.backend == "seqio":
        from lm.data import tasks  # imports TensorFlow: loaded for backend 'seqio' alone

        return tasks
    if cfg.mixture:
        return mixture_lib
    return cache if cfg.cache_dir else array


def make_train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                        process_count: int = 1):
    """Infinite training batches: this host's rows of each global batch of ``cfg.batch_size``.

    A ``BatchIterator``, or a ``mixture.MixtureIterator`` (same interface) with a mixture.
    """
    seed = check_seed(seed)
    check_processes(cfg, process_index, process_count)
    return backend_of(cfg).train_iterator(cfg, seed, process_index, process_count)


def make_eval_batches(cfg: DataConfig, process_index: int = 0,
                      process_count: int = 1) -> list[Batch]:
    """``cfg.eval_batches`` deterministic validation batches (this host's rows of each).

    With a mixture: ``cfg.eval_batches`` of each source in turn, so every source weighs the
    same; ``mixture.source_eval_batches`` gives them by source.
    """
    return backend_of(cfg).eval_batches(cfg, process_index, process_count)


def split_tokens(cfg: DataConfig, split: str) -> np.ndarray:
    """The whole split as one read-only token array: memory-mapped from ``cfg.cache_dir``, or
    encoded once per process."""
    return (cache if cfg.cache_dir else tokens_lib).split_tokens(cfg, split)


def packed_rows(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, positions) of every packed row of the split: packed by seqio for backend
    'seqio', else memory-mapped from ``cfg.cache_dir`` or packed in NumPy once per process."""
    if cfg.backend == "seqio":
        return backend_of(cfg).packed_rows(cfg, split)  # lm.data.tasks
    return (cache if cfg.cache_dir else tokens_lib).packed_rows(cfg, split)
