"""Batches of one corpus: this host's rows of each global batch, for training and evaluation.

Global row ``j`` of the training stream is a window at offset ``hash(seed, j)`` of the train
split, a packed row picked by the same hash, or hashed random tokens (backend 'synthetic');
batch ``i`` holds rows ``i*B .. i*B+B-1`` and a host builds only its own slice of them. The
unpacked 'seqio' backend streams its windows from the seqio task instead (``lm.data.tasks``,
loaded only then because it imports TensorFlow). Evaluation takes evenly spaced rows of the
validation split.

Sits on ``tokens`` and the base layer (``config``, ``windows``); ``mixture`` reads each of its
sources' evaluation batches here and ``pipeline`` dispatches to it when there is no mixture.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from lm.configlib import ConfigError
from lm.data import vocab as vocab_lib
from lm.data import windows as windows_lib
from lm.data.config import DataConfig
from lm.data.tokens import packed_rows, split_tokens
from lm.data.windows import Batch

_EVAL_KEY = 0x5EED_E7A1  # hash key of the synthetic evaluation batches (never a training seed)


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


# ----------------------------------------------------------------------------- checks

def check_processes(cfg: DataConfig, process_index: int, process_count: int) -> None:
    """Raises unless ``process_index`` is one of ``process_count`` that share the batch evenly."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, {process_count}).")
    if cfg.batch_size % process_count:
        raise ConfigError(f"config.data.batch_size={cfg.batch_size} does not split across "
                          f"{process_count} processes; use a multiple of {process_count}.")


def check_seed(seed: int) -> int:
    """``seed`` as an int, after checking that it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the data seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


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
    tokens_nl = vocab_lib.NUM_RESERVED + windows_lib.hashed_ints(seed, cells_nl, high)
    return windows_lib.windows_to_batch(tokens_nl.astype(np.int32))


def _train_row_fn(cfg: DataConfig, seed: int) -> Callable[[np.ndarray], Batch]:
    """Global train row ids -> batch (all backends but unpacked 'seqio', which streams)."""
    if cfg.backend == "synthetic":
        return functools.partial(_synthetic_rows, cfg, seed)
    if cfg.packing:
        targets_rt, positions_rt = packed_rows(cfg, "train")

        def packed(rows_n):
            picked_n = windows_lib.hashed_ints(seed, rows_n, len(targets_rt))
            return windows_lib.packed_batch(targets_rt[picked_n], positions_rt[picked_n])

        return packed
    tokens = split_tokens(cfg, "train")
    return lambda rows_n: windows_lib.windows_to_batch(
        windows_lib.train_windows(tokens, cfg.seq_len, seed, rows_n))


def _eval_global_batch(cfg: DataConfig, num_rows: int) -> Callable[[np.ndarray], Batch]:
    """Row ids among ``num_rows`` evaluation rows -> batch."""
    if cfg.backend == "synthetic":
        return functools.partial(_synthetic_rows, cfg, _EVAL_KEY)
    if cfg.packing:
        targets_rt, positions_rt = packed_rows(cfg, "validation")
        picked_n = windows_lib.evenly_spaced(len(targets_rt), num_rows)
        return lambda rows_n: windows_lib.packed_batch(targets_rt[picked_n[rows_n]],
                                                       positions_rt[picked_n[rows_n]])
    windows_kt = _validation_windows_for(cfg)
    picked_n = windows_lib.evenly_spaced(len(windows_kt), num_rows)
    return lambda rows_n: windows_lib.windows_to_batch(windows_kt[picked_n[rows_n]])


def _validation_windows_for(cfg: DataConfig) -> np.ndarray:
    if cfg.backend == "seqio":
        from lm.data import tasks  # TensorFlow only on request

        return tasks.validation_windows(cfg)
    return windows_lib.validation_windows(split_tokens(cfg, "validation"), cfg.seq_len)


# ----------------------------------------------------------------------------- one corpus

def corpus_train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                          process_count: int = 1) -> BatchIterator:
    """Infinite training batches of ``cfg.corpus`` alone: this host's rows of each."""
    seed = check_seed(seed)
    check_processes(cfg, process_index, process_count)
    if cfg.backend == "seqio" and not cfg.packing:
        from lm.data import tasks  # TensorFlow only on request

        return BatchIterator(tasks.train_batch_fn(cfg, seed, process_index, process_count), seed)
    row_fn = _train_row_fn(cfg, seed)
    return BatchIterator(
        lambda i: row_fn(_host_rows(cfg, i, process_index, process_count)), seed)


def corpus_eval_batches(cfg: DataConfig, process_index: int = 0,
                        process_count: int = 1) -> list[Batch]:
    """The validation batches of ``cfg.corpus`` alone (a mixture's source included)."""
    check_processes(cfg, process_index, process_count)
    batch_fn = _eval_global_batch(cfg, cfg.eval_batches * cfg.batch_size)
    return [batch_fn(_host_rows(cfg, i, process_index, process_count))
            for i in range(cfg.eval_batches)]
