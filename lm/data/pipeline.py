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

Layers of ``lm.data``, lowest first; a module imports only modules on its own line or above:
  corpus, sources, vocab, tokenizer  corpora, local datasets, vocabularies, tokenizer training.
  config, windows, mixture_spec      the base layer of the pipeline: ``DataConfig`` and its
                                     validation; windows, packing, ``Batch`` and ``BATCH_KEYS``;
                                     mixture strings.
  tokens                             a config's vocabulary and splits as tokens (or its cache).
  batches, objectives, features      one corpus's batches; feature conversion.
  mixture                            training rows from several corpora at set rates.
  tasks                              the seqio backend (imports TensorFlow).
  pipeline                           this dispatcher; it re-exports the names of the layers
                                     below that callers read as ``pipeline.<name>``.
  cache                              the token cache builder (``python -m lm.data.cache``).
The exceptions are imports inside a function: ``tokens``, ``batches`` and ``vocab`` import
``tasks`` only to serve backend 'seqio', so that no other backend loads TensorFlow, and
``corpus`` imports ``sources`` only to read a 'tfds:' or 'hf:' corpus.
"""
from __future__ import annotations

from lm.configlib import ConfigError
from lm.data import mixture as mixture_lib
from lm.data import objectives
from lm.data.batches import BatchIterator, corpus_eval_batches, corpus_train_iterator
from lm.data.batches import check_processes, check_seed
from lm.data.config import BACKENDS, DataConfig
from lm.data.tokens import document_tokens, packed_rows, split_tokens, vocab_corpora, vocabulary
from lm.data.windows import (BATCH_KEYS, Batch, chunk, evenly_spaced, hashed_ints, pack_examples,
                             packed_batch, train_windows, validation_windows, windows_to_batch)

__all__ = [
    "BACKENDS", "BATCH_KEYS", "Batch", "BatchIterator", "ConfigError", "DataConfig", "chunk",
    "corpus_eval_batches", "document_tokens", "evenly_spaced", "hashed_ints",
    "make_eval_batches", "make_train_iterator", "pack_examples", "packed_batch", "packed_rows",
    "split_tokens", "train_windows", "validation_windows", "vocab_corpora", "vocab_size",
    "vocabulary", "windows_to_batch",
]


def vocab_size(cfg: DataConfig) -> int:
    """The vocabulary size plus the objective's sentinel / MASK ids (the model may pad it)."""
    extra = max(objectives.objective_config(cfg, 0, name).extra_ids
                for name in (cfg.objective, cfg.eval_objective or cfg.objective))
    return vocabulary(cfg).vocab_size + extra


def make_train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                        process_count: int = 1):
    """Infinite training batches: this host's rows of each global batch of ``cfg.batch_size``.

    A ``BatchIterator``, or a ``mixture.MixtureIterator`` (same interface) with a mixture.
    """
    seed = check_seed(seed)
    check_processes(cfg, process_index, process_count)
    if cfg.mixture:
        return mixture_lib.MixtureIterator(cfg, seed, process_index, process_count)
    return corpus_train_iterator(cfg, seed, process_index, process_count)


def make_eval_batches(cfg: DataConfig, process_index: int = 0,
                      process_count: int = 1) -> list[Batch]:
    """``cfg.eval_batches`` deterministic validation batches (this host's rows of each).

    With a mixture: ``cfg.eval_batches`` of each source in turn, so every source weighs the
    same; ``mixture.source_eval_batches`` gives them by source.
    """
    if cfg.mixture:
        per_source = mixture_lib.source_eval_batches(cfg, process_index, process_count)
        return [batch for batches in per_source.values() for batch in batches]
    return corpus_eval_batches(cfg, process_index, process_count)
