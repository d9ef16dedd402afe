"""Rows into batches: the resumable iterator, host slices, and row functions over token arrays.

A leaf of ``lm.data`` (it imports ``config`` and ``windows``) that every backend builds on. A
*row function* maps global row ids to the ``Batch`` of those rows. Global row ``j`` of the
training stream is a window at offset ``hash(seed, j)`` of the train tokens, or the packed row
that the same hash picks; batch ``i`` holds rows ``i*B .. i*B+B-1`` and a host builds only its
own slice of them, so batch ``i`` depends on (seed, i) alone and resuming needs only ``i``.
Evaluation takes ``eval_batches * B`` evenly spaced rows of the validation split.

Backends differ in where the arrays come from: ``lm.data.array`` tokenizes in memory and
``lm.data.cache`` maps a pre-tokenized cache, each passing its ``split_tokens(cfg, split)`` and
``packed_rows(cfg, split)`` to ``train_rows`` / ``eval_rows``; the seqio backend
(``lm.data.tasks``) reads its arrays through seqio tasks and uses the row functions below.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from lm.configlib import ConfigError
from lm.data import windows as windows_lib
from lm.data.config import DataConfig
from lm.data.windows import Batch

RowFn = Callable[[np.ndarray], Batch]  # global row ids [n] -> the batch of those n rows
SplitTokens = Callable[[DataConfig, str], np.ndarray]  # (cfg, split) -> token stream
PackedRows = Callable[[DataConfig, str], tuple[np.ndarray, np.ndarray]]  # -> (targets, positions)


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


# ----------------------------------------------------------------------------- host slices

def host_rows(cfg: DataConfig, batch_index: int, process_index: int,
              process_count: int) -> np.ndarray:
    """Global row ids of this host's slice of global batch ``batch_index``."""
    per_host = cfg.batch_size // process_count
    start = batch_index * cfg.batch_size + process_index * per_host
    return np.arange(start, start + per_host, dtype=np.int64)


def train_iterator(cfg: DataConfig, row_fn: RowFn, seed: int, process_index: int = 0,
                   process_count: int = 1) -> BatchIterator:
    """Infinite training batches: this host's rows of each global batch, by ``row_fn``."""
    return BatchIterator(lambda i: row_fn(host_rows(cfg, i, process_index, process_count)),
                         seed)


def eval_row_count(cfg: DataConfig) -> int:
    """Rows of all the evaluation batches together."""
    return cfg.eval_batches * cfg.batch_size


def eval_batches(cfg: DataConfig, row_fn: RowFn, process_index: int = 0,
                 process_count: int = 1) -> list[Batch]:
    """This host's rows of each of the ``cfg.eval_batches`` evaluation batches, by ``row_fn``."""
    check_processes(cfg, process_index, process_count)
    return [row_fn(host_rows(cfg, i, process_index, process_count))
            for i in range(cfg.eval_batches)]


# ----------------------------------------------------------------------------- row functions

def window_train_rows(tokens: np.ndarray, seq_len: int, seed: int) -> RowFn:
    """nanoGPT windows at hashed offsets of the train stream ``tokens``."""
    return lambda rows_n: windows_lib.windows_to_batch(
        windows_lib.train_windows(tokens, seq_len, seed, rows_n))


def packed_train_rows(targets_rt: np.ndarray, positions_rt: np.ndarray, seed: int) -> RowFn:
    """The packed rows that ``hash(seed, row)`` picks."""
    def rows(rows_n: np.ndarray) -> Batch:
        picked_n = windows_lib.hashed_ints(seed, rows_n, len(targets_rt))
        return windows_lib.packed_batch(targets_rt[picked_n], positions_rt[picked_n])
    return rows


def window_eval_rows(windows_kt: np.ndarray, num_rows: int) -> RowFn:
    """Evaluation row ids among ``num_rows`` -> evenly spaced validation windows."""
    picked_n = windows_lib.evenly_spaced(len(windows_kt), num_rows)
    return lambda rows_n: windows_lib.windows_to_batch(windows_kt[picked_n[rows_n]])


def packed_eval_rows(targets_rt: np.ndarray, positions_rt: np.ndarray, num_rows: int) -> RowFn:
    """Evaluation row ids among ``num_rows`` -> evenly spaced packed validation rows."""
    picked_n = windows_lib.evenly_spaced(len(targets_rt), num_rows)
    return lambda rows_n: windows_lib.packed_batch(targets_rt[picked_n[rows_n]],
                                                   positions_rt[picked_n[rows_n]])


def train_rows(cfg: DataConfig, seed: int, split_tokens: SplitTokens,
               packed_rows: PackedRows) -> RowFn:
    """Training rows of a corpus split held as arrays: packed rows or token windows."""
    if cfg.packing:
        return packed_train_rows(*packed_rows(cfg, "train"), seed)
    return window_train_rows(split_tokens(cfg, "train"), cfg.seq_len, seed)


def eval_rows(cfg: DataConfig, split_tokens: SplitTokens, packed_rows: PackedRows) -> RowFn:
    """Evaluation rows of a corpus split held as arrays: packed rows or disjoint windows."""
    if cfg.packing:
        return packed_eval_rows(*packed_rows(cfg, "validation"), eval_row_count(cfg))
    tokens = split_tokens(cfg, "validation")
    return window_eval_rows(windows_lib.validation_windows(tokens, cfg.seq_len),
                            eval_row_count(cfg))
