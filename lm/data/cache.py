"""Pre-tokenized cache: a split's token stream and packed rows as NumPy files read by memory map.

    python -m lm.data.cache --corpus=shakespeare --vocab=sentencepiece --seq_len=1024 \
        --output=cache/shakespeare_sp1024

Writes ``<output>/<split>/{tokens.npy, packed_targets.npy, packed_positions.npy, meta.json}``
for the train and validation splits. Reading needs only NumPy (no TensorFlow, no tokenizer), the
operating system pages the arrays in on demand, and the batches equal the in-memory pipeline's.
The directory appears atomically: it is written under a temporary name and renamed when
complete, so an interrupted build never leaves a cache that looks finished.

Also the backend of ``backend='array'`` with ``config.data.cache_dir`` set: the same rows as
``lm.data.array`` (``lm.data.batches``), from the memory-mapped arrays. Imports only leaves:
``tokens`` and ``objectives`` for what it writes, ``batches`` and ``windows`` for what it reads.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

from lm import fileio
from lm.configlib import ConfigError
from lm.data import batches
from lm.data import objectives
from lm.data import tokens as tokens_lib
from lm.data import windows as windows_lib
from lm.data.config import DataConfig
from lm.data.windows import Batch

SPLITS = ("train", "validation")
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- reading

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

    def window_batch(self, seed: int, rows_n: np.ndarray, seq_len: int) -> Batch:
        """nanoGPT windows for global rows ``rows_n`` (equal to the array backend's)."""
        windows = windows_lib.train_windows(self.tokens, seq_len, seed, rows_n)
        return windows_lib.windows_to_batch(windows.astype(np.int32))

    def packed_batch(self, rows_n: np.ndarray) -> Batch:
        """Packed rows ``rows_n`` (modulo the number of rows) with segment ids and positions."""
        index = rows_n % len(self.packed_targets)
        return windows_lib.packed_batch(np.asarray(self.packed_targets[index], np.int32),
                                        np.asarray(self.packed_positions[index], np.int32))


def open_cache(cfg: DataConfig, split: str, packed: bool = False) -> TokenCache:
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


def split_tokens(cfg: DataConfig, split: str) -> np.ndarray:
    """The split's token stream, memory-mapped from ``cfg.cache_dir``."""
    return open_cache(cfg, split).tokens


def packed_rows(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, positions) of the split's packed rows, memory-mapped from ``cfg.cache_dir``."""
    cached = open_cache(cfg, split, packed=True)
    return cached.packed_targets, cached.packed_positions


def train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                   process_count: int = 1) -> batches.BatchIterator:
    """The array backend's training batches, read from the cache."""
    row_fn = batches.train_rows(cfg, seed, split_tokens, packed_rows)
    return batches.train_iterator(cfg, row_fn, seed, process_index, process_count)


def eval_batches(cfg: DataConfig, process_index: int = 0, process_count: int = 1) -> list[Batch]:
    """The array backend's validation batches, read from the cache."""
    row_fn = batches.eval_rows(cfg, split_tokens, packed_rows)
    return batches.eval_batches(cfg, row_fn, process_index, process_count)


# ----------------------------------------------------------------------------- building


def _smallest_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def build_cache(cfg: DataConfig, output: str) -> str:
    """Tokenizes and packs every split of ``cfg`` into ``output`` (replacing an older cache)."""
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".cache-", dir=parent)
    os.chmod(staging, fileio.new_folder_mode())  # mkdtemp makes it owner-only; others read caches too
    try:
        dtype = _smallest_dtype(objectives.vocab_size(cfg))
        for split in SPLITS:
            _write_split(cfg, split, os.path.join(staging, split), dtype)
        _replace_directory(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _write_split(cfg, split: str, directory: str, dtype) -> None:
    os.makedirs(directory)
    tokens = tokens_lib.split_tokens(cfg, split)
    targets, positions = tokens_lib.packed_rows(dataclasses.replace(cfg, packing=True), split)
    # np.save writes in place: these files live in the staging folder, renamed only when whole.
    np.save(os.path.join(directory, "tokens.npy"), tokens.astype(dtype))
    np.save(os.path.join(directory, "packed_targets.npy"), targets.astype(dtype))
    np.save(os.path.join(directory, "packed_positions.npy"), positions.astype(np.uint16
                                                                            if cfg.seq_len < 65536
                                                                            else np.int32))
    meta = {"format": FORMAT_VERSION, "split": split, "corpus": cfg.corpus, "vocab": cfg.vocab,
            "vocab_model": cfg.vocab_model, "vocab_size": objectives.vocab_size(cfg),
            "train_fraction": cfg.train_fraction, "seq_len": cfg.seq_len, "tokens": len(tokens),
            "packed_rows": len(targets)}
    fileio.write_atomically(os.path.join(directory, "meta.json"), json.dumps(meta, indent=2))


def _replace_directory(staging: str, output: str) -> None:
    """Renames the finished ``staging`` to ``output``; an older cache is removed only after."""
    old = None
    if os.path.exists(output):
        old = output + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output, old)
    os.replace(staging, output)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build a pre-tokenized cache of a corpus.")
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--vocab", default="char", choices=("char", "sentencepiece"))
    parser.add_argument("--vocab_model", default="")
    parser.add_argument("--seq_len", type=int, default=1024, help="packed row length")
    parser.add_argument("--train_fraction", type=float, default=0.9)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    cfg = DataConfig(corpus=args.corpus, vocab=args.vocab, vocab_model=args.vocab_model,
                     seq_len=args.seq_len, train_fraction=args.train_fraction)
    path = build_cache(cfg, args.output)
    for split in SPLITS:
        meta = TokenCache(path, split).meta
        print(f"{split}: {meta['tokens']:,} tokens, {meta['packed_rows']:,} packed rows of "
              f"{meta['seq_len']} -> {os.path.join(path, split)}")


if __name__ == "__main__":
    main()
