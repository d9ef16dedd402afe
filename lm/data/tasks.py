"""seqio tasks over the corpora (imports seqio and TensorFlow; used by backend='seqio').

Two kinds of task per (corpus, vocabulary):

``{corpus}_{vocab}_seq{T}``  windows of T + 1 tokens, output feature 'targets' (add_eos=False).
    The window length is part of the name because the source cuts windows in token space,
    so one task exists per sequence length; ``register_tasks(seq_len)`` registers them.
    'train': an infinite stream, window j at offset ``hash(seed, j) mod (n - T)`` of the
    train tokens; 'validation': the disjoint windows (stride T) in order. The source holds the
    tokens, so there is no tokenize preprocessor. These are exactly the windows of the 'array'
    backend, so both backends give identical batches.
``{corpus}_{vocab}_docs``  one example per document, tokenized in TensorFlow, EOS appended,
    cut into chunks of at most the 'targets' length; pack them with
    ``seqio.LMFeatureConverter(pack=True)`` (what ``data.packing=True`` does).

``{mixture}_{vocab}_seq{T}``  a seqio mixture of the window tasks of a mixture's corpora at the
    rates of ``lm.data.mixture`` (SentencePiece only: a seqio mixture's tasks share a vocabulary);
    ``register_mixture('gutenberg', seq_len)`` registers it.

``{vocab}`` is 'char' or 'sp1024' (the shipped SentencePiece model). Corpora given as paths
and other models get a short hash in the name; ``register_for_config(cfg)`` handles any config.

The backend of ``backend='seqio'``: ``train_iterator`` and ``eval_batches`` give the batches of
the 'array' backend, read through these tasks. It imports only leaves (``tokens`` for the
vocabulary and token streams, ``mixture_spec`` for a mixture's rates, ``batches`` for the rows,
``seqio_vocab`` for the vocabulary in TensorFlow); ``lm.data.pipeline`` imports it only for
backend 'seqio', so that no other backend loads TensorFlow.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import re

import numpy as np
import seqio
import tensorflow as tf

from lm.data import batches
from lm.data import corpus as corpus_lib
from lm.data import mixture_spec
from lm.data import tokens as tokens_lib
from lm.data import vocab as vocab_lib
from lm.data import windows as windows_lib
from lm.data.config import DataConfig
from lm.data.seqio_vocab import as_seqio_vocabulary
from lm.data.windows import Batch

_ROWS_PER_CALL = 1024  # windows computed per NumPy call in the train stream


# ----------------------------------------------------------------------------- names

def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _corpus_tag(corpus: str) -> str:
    if corpus in corpus_lib.EMBEDDED:
        return corpus
    stem = re.sub(r"[^a-z0-9]+", "_", pathlib.Path(corpus).stem.lower()).strip("_") or "corpus"
    return f"{stem}_{_short_hash(str(pathlib.Path(corpus).resolve()))}"


def _vocab_tag(cfg: DataConfig) -> str:
    if cfg.vocab == "char":
        return "char"
    if pathlib.Path(cfg.model_path).resolve() == vocab_lib.DEFAULT_SENTENCEPIECE_MODEL:
        return "sp1024"
    return f"sp_{_short_hash(str(pathlib.Path(cfg.model_path).resolve()))}"


def _base_name(cfg: DataConfig) -> str:
    name = f"{_corpus_tag(cfg.corpus)}_{_vocab_tag(cfg)}"
    if cfg.train_fraction != DataConfig.train_fraction:
        name += f"_train{round(cfg.train_fraction * 1000):d}"  # per mille
    return name


def window_task_name(cfg: DataConfig) -> str:
    return f"{_base_name(cfg)}_seq{cfg.seq_len}"


def docs_task_name(cfg: DataConfig) -> str:
    return f"{_base_name(cfg)}_docs"


# ----------------------------------------------------------------------------- sources

def _output_features(cfg: DataConfig, add_eos: bool) -> dict[str, seqio.Feature]:
    vocabulary = as_seqio_vocabulary(tokens_lib.vocabulary(cfg))
    return {"targets": seqio.Feature(vocabulary=vocabulary, add_eos=add_eos, dtype=tf.int32)}


def _random_windows(tokens: np.ndarray, seq_len: int, seed: int) -> tf.data.Dataset:
    """Window j of the infinite train stream, exactly ``lm.data.windows.train_windows`` row j."""
    def windows(rows_n):
        return windows_lib.train_windows(tokens, seq_len, seed, rows_n).astype(np.int32)

    def to_windows(rows_n):
        windows_nt = tf.numpy_function(windows, [rows_n], tf.int32, stateful=False)
        return tf.ensure_shape(windows_nt, [None, seq_len + 1])

    ds = tf.data.Dataset.counter().batch(_ROWS_PER_CALL).map(to_windows).unbatch()
    return ds.map(lambda window_t: {"targets": window_t})


def _window_source(cfg: DataConfig) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files  # train windows are already random; validation stays in order
        tokens = tokens_lib.split_tokens(cfg, split)
        if split == "train":
            return _random_windows(tokens, cfg.seq_len, seed or 0)
        windows_kt = windows_lib.validation_windows(tokens, cfg.seq_len)
        return tf.data.Dataset.from_tensor_slices({"targets": windows_kt})

    return seqio.FunctionDataSource(dataset_fn, splits=corpus_lib.SPLITS)


def _docs_source(cfg: DataConfig) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # documents in file-name order
        texts = [d.text for d in corpus_lib.split_documents(cfg.corpus, split, cfg.train_fraction)]
        return tf.data.Dataset.from_tensor_slices({"targets": texts})

    return seqio.FunctionDataSource(dataset_fn, splits=corpus_lib.SPLITS)


def chunk_targets(dataset: tf.data.Dataset, sequence_length) -> tf.data.Dataset:
    """Cuts each 'targets' sequence into consecutive chunks of at most the 'targets' length."""
    length = sequence_length["targets"]

    def chunks(example):
        tokens = example["targets"]
        num_chunks = (tf.size(tokens, out_type=tf.int64) + length - 1) // length
        return tf.data.Dataset.range(num_chunks).map(
            lambda k: {"targets": tokens[k * length:(k + 1) * length]})

    return dataset.flat_map(chunks)


# ----------------------------------------------------------------------------- registration

def _add_task(name: str, **kwargs) -> str:
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(name, **kwargs)
    return name


def register_window_task(cfg: DataConfig) -> str:
    return _add_task(window_task_name(cfg), source=_window_source(cfg), preprocessors=[],
                     output_features=_output_features(cfg, add_eos=False))


def register_docs_task(cfg: DataConfig) -> str:
    preprocessors = [functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                     seqio.preprocessors.append_eos,
                     chunk_targets]
    return _add_task(docs_task_name(cfg), source=_docs_source(cfg), preprocessors=preprocessors,
                     output_features=_output_features(cfg, add_eos=True))


def register_for_config(cfg: DataConfig) -> str:
    """Registers (once) and names the task that ``cfg`` reads."""
    return register_docs_task(cfg) if cfg.packing else register_window_task(cfg)


def register_tasks(seq_len: int) -> list[str]:
    """Registers the window and document tasks of every embedded corpus and vocabulary."""
    names = []
    for corpus in corpus_lib.EMBEDDED:
        for kind in vocab_lib.KINDS:
            cfg = DataConfig(backend="seqio", corpus=corpus, vocab=kind, seq_len=seq_len)
            names += [register_window_task(cfg), register_docs_task(cfg)]
    return names


def mixture_name(cfg: DataConfig) -> str:
    """``{mixture}_{vocab}_seq{T}``, plus the temperature when rates come from sizes."""
    tag = cfg.mixture if cfg.mixture in mixture_spec.MIXTURES else f"mix_{_short_hash(cfg.mixture)}"
    name = f"{tag}_{_vocab_tag(cfg)}_seq{cfg.seq_len}"
    if mixture_spec.parse_mixture(cfg.mixture).rates is None and cfg.mixture_temperature != 1:
        name += f"_t{round(cfg.mixture_temperature * 1000):d}"  # per mille
    return name


def register_mixture(mixture: str = "gutenberg", seq_len: int = 64, temperature: float = 1.0,
                     vocab_model: str = "") -> str:
    """Registers (once) a seqio mixture of the sources' window tasks at ``mixture_rates``.

    The tasks of one seqio mixture must share a vocabulary, so this uses SentencePiece (the
    shipped model unless ``vocab_model``); the per-corpus char vocabularies differ.
    """
    cfg = DataConfig(mixture=mixture, mixture_temperature=temperature, seq_len=seq_len,
                     vocab="sentencepiece", vocab_model=vocab_model)
    name = mixture_name(cfg)
    if name not in seqio.MixtureRegistry.names():
        sources = mixture_spec.parse_mixture(mixture).sources
        tasks = [register_window_task(dataclasses.replace(cfg, backend="seqio", corpus=source,
                                                          mixture=""))
                 for source in sources]
        seqio.MixtureRegistry.add(name, list(zip(tasks, mixture_spec.mixture_rates(cfg).tolist())))
    return name


# ----------------------------------------------------------------------------- seqio backend

def _as_numpy(ds: tf.data.Dataset, *keys: str) -> list[np.ndarray]:
    """Reads a finite dataset once; returns the concatenated arrays of ``keys``."""
    chunks = list(ds.batch(4096).as_numpy_iterator())
    return [np.concatenate([chunk[key] for chunk in chunks]) for key in keys]


def validation_windows(cfg: DataConfig) -> np.ndarray:
    """All validation windows [K, seq_len + 1] read through the window task."""
    task = seqio.get_mixture_or_task(register_window_task(cfg))
    ds = task.get_dataset({"targets": cfg.seq_len + 1}, split="validation", shuffle=False)
    return _as_numpy(ds, "targets")[0]


def packed_rows(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, positions) of every packed row of the split via ``LMFeatureConverter``,
    packed once per process (read-only)."""
    # Only these fields change the rows, so train and evaluation configs share one entry.
    key = DataConfig(backend="seqio", corpus=cfg.corpus, train_fraction=cfg.train_fraction,
                     vocab=cfg.vocab, vocab_model=cfg.vocab_model, seq_len=cfg.seq_len,
                     packing=True)
    return _cached_packed_rows(key, split)


@functools.lru_cache(maxsize=8)
def _cached_packed_rows(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    tokens_lib.check_split_has_text(cfg, split)
    lengths = {"targets": cfg.seq_len}
    task = seqio.get_mixture_or_task(register_docs_task(cfg))
    ds = task.get_dataset(lengths, split=split, shuffle=False)
    ds = seqio.LMFeatureConverter(pack=True)(ds, lengths)
    # seqio packs with a tf.while_loop: tens of seconds for Shakespeare's 4.5M train tokens.
    rows = tuple(_as_numpy(ds, "decoder_target_tokens", "decoder_positions"))
    for array in rows:
        array.setflags(write=False)  # shared by every batch of this process
    return rows


class _TrainStream:
    """Global batch index -> this host's batch, reading the window task's train stream."""

    def __init__(self, cfg: DataConfig, seed: int, process_index: int,
                 process_count: int):
        self._cfg, self._seed = cfg, seed
        per_host = cfg.batch_size // process_count
        self._host_slice = slice(process_index * per_host, (process_index + 1) * per_host)
        self._task = seqio.get_mixture_or_task(register_window_task(cfg))
        self._iterator, self._next_index = None, None

    def _open(self, start_batch: int):
        ds = self._task.get_dataset({"targets": self._cfg.seq_len + 1}, split="train",
                                    shuffle=False, seed=self._seed)
        # Resuming replays the stream up to the saved batch: cheap next to a training step.
        ds = ds.batch(self._cfg.batch_size, drop_remainder=True).skip(start_batch)
        return ds.as_numpy_iterator()

    def __call__(self, batch_index: int) -> Batch:
        if batch_index != self._next_index:
            self._iterator = self._open(batch_index)
        windows_bt1 = next(self._iterator)["targets"]
        self._next_index = batch_index + 1
        return windows_lib.windows_to_batch(windows_bt1[self._host_slice])


def train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                   process_count: int = 1) -> batches.BatchIterator:
    """The 'array' backend's training batches read through seqio: the window task's stream,
    or packed rows that ``hash(seed, row)`` picks among those ``LMFeatureConverter`` packs."""
    if not cfg.packing:
        return batches.BatchIterator(_TrainStream(cfg, seed, process_index, process_count), seed)
    row_fn = batches.packed_train_rows(*packed_rows(cfg, "train"), seed)
    return batches.train_iterator(cfg, row_fn, seed, process_index, process_count)


def eval_batches(cfg: DataConfig, process_index: int = 0, process_count: int = 1) -> list[Batch]:
    """The 'array' backend's validation batches read through seqio."""
    num_rows = batches.eval_row_count(cfg)
    if cfg.packing:
        row_fn = batches.packed_eval_rows(*packed_rows(cfg, "validation"), num_rows)
    else:
        row_fn = batches.window_eval_rows(validation_windows(cfg), num_rows)
    return batches.eval_batches(cfg, row_fn, process_index, process_count)
