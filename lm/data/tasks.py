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

Built on ``tokens``, ``windows`` and ``mixture``; ``lm.data.tokens`` and ``lm.data.batches``
import this module inside the functions that serve backend 'seqio', so that no other backend
loads TensorFlow.
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

from lm.data import corpus as corpus_lib
from lm.data import mixture as mixture_lib
from lm.data import tokens as tokens_lib
from lm.data import vocab as vocab_lib
from lm.data import windows as windows_lib
from lm.data.config import DataConfig
from lm.data.windows import Batch

_ROWS_PER_CALL = 1024  # windows computed per NumPy call in the train stream


class SeqioCharVocabulary(seqio.Vocabulary):
    """``CharVocabulary`` for seqio: the same ids in Python and in TensorFlow."""

    def __init__(self, vocab: vocab_lib.CharVocabulary):
        super().__init__(extra_ids=0)
        self.char_vocab = vocab
        self._codepoint_to_id = tf.constant(vocab.codepoint_to_id_table())
        self._id_to_codepoint = tf.constant(vocab.id_to_codepoint_table())

    @property
    def bos_id(self):
        return None

    @property
    def eos_id(self) -> int:
        return vocab_lib.EOS_ID

    @property
    def unk_id(self) -> int:
        return vocab_lib.UNK_ID

    @property
    def _base_vocab_size(self) -> int:
        return self.char_vocab.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self.char_vocab.encode(s)

    def _decode(self, ids) -> str:
        return self.char_vocab.decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        codepoints = tf.strings.unicode_decode(s, "UTF-8")
        last = tf.shape(self._codepoint_to_id)[0] - 1
        return tf.gather(self._codepoint_to_id, tf.minimum(codepoints, last))

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids, tf.int32)
        keep = tf.logical_and(tf.not_equal(ids, vocab_lib.PAD_ID), tf.not_equal(ids, self.eos_id))
        kept = tf.ragged.boolean_mask(ids, keep)
        unknown = tf.logical_or(kept < 0, kept >= self._base_vocab_size)
        kept = tf.where(unknown, tf.ones_like(kept) * self.unk_id, kept)
        return tf.strings.unicode_encode(tf.gather(self._id_to_codepoint, kept), "UTF-8")

    def __eq__(self, other) -> bool:
        return (isinstance(other, SeqioCharVocabulary)
                and other.char_vocab.chars == self.char_vocab.chars)

    def __hash__(self) -> int:
        return hash(self.char_vocab.chars)


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
    vocabulary = vocab_lib.as_seqio_vocabulary(tokens_lib.vocabulary(cfg))
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
    tag = cfg.mixture if cfg.mixture in mixture_lib.MIXTURES else f"mix_{_short_hash(cfg.mixture)}"
    name = f"{tag}_{_vocab_tag(cfg)}_seq{cfg.seq_len}"
    if mixture_lib.parse_mixture(cfg.mixture).rates is None and cfg.mixture_temperature != 1:
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
        sources = mixture_lib.parse_mixture(mixture).sources
        tasks = [register_window_task(dataclasses.replace(cfg, backend="seqio", corpus=source,
                                                          mixture=""))
                 for source in sources]
        seqio.MixtureRegistry.add(name, list(zip(tasks, mixture_lib.mixture_rates(cfg).tolist())))
    return name


# ----------------------------------------------------------------------------- seqio backend

def _as_numpy(ds: tf.data.Dataset, *keys: str) -> list[np.ndarray]:
    """Reads a finite dataset once; returns the concatenated arrays of ``keys``."""
    batches = list(ds.batch(4096).as_numpy_iterator())
    return [np.concatenate([b[key] for b in batches]) for key in keys]


def validation_windows(cfg: DataConfig) -> np.ndarray:
    """All validation windows [K, seq_len + 1] read through the window task."""
    task = seqio.get_mixture_or_task(register_window_task(cfg))
    ds = task.get_dataset({"targets": cfg.seq_len + 1}, split="validation", shuffle=False)
    return _as_numpy(ds, "targets")[0]


def packed_rows(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, positions) of every packed row of the split via ``LMFeatureConverter``."""
    lengths = {"targets": cfg.seq_len}
    task = seqio.get_mixture_or_task(register_docs_task(cfg))
    ds = task.get_dataset(lengths, split=split, shuffle=False)
    ds = seqio.LMFeatureConverter(pack=True)(ds, lengths)
    # seqio packs with a tf.while_loop: tens of seconds for Shakespeare's 4.5M train tokens.
    targets_rt, positions_rt = _as_numpy(ds, "decoder_target_tokens", "decoder_positions")
    return targets_rt, positions_rt


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


def train_batch_fn(cfg: DataConfig, seed: int, process_index: int,
                   process_count: int):
    """The seqio backend's unpacked training batches (same rows as the 'array' backend)."""
    return _TrainStream(cfg, seed, process_index, process_count)
