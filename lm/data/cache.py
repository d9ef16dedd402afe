"""Pre-tokenized cache: a split's token stream and packed rows as NumPy files read by memory map.

    python -m lm.data.cache --corpus=shakespeare --vocab=sentencepiece --seq_len=1024 \
        --output=cache/shakespeare_sp1024

Writes ``<output>/<split>/{tokens.npy, packed_targets.npy, packed_positions.npy, meta.json}``
for the train and validation splits. Reading needs only NumPy (no TensorFlow, no tokenizer), the
operating system pages the arrays in on demand, and the batches equal the in-memory pipeline's.
The directory appears atomically: it is written under a temporary name and renamed when
complete, so an interrupted build never leaves a cache that looks finished.

This module builds caches on top of the pipeline; the reader, ``TokenCache``, lives in
``lm.data.tokens`` (which reads ``config.data.cache_dir``) and is re-exported here.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

from lm.data import pipeline
from lm.data.config import DataConfig
from lm.data.tokens import TokenCache, packed_rows, split_tokens

SPLITS = ("train", "validation")
FORMAT_VERSION = 1


def _smallest_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def build_cache(cfg: DataConfig, output: str) -> str:
    """Tokenizes and packs every split of ``cfg`` into ``output`` (replacing an older cache)."""
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".cache-", dir=parent)
    try:
        dtype = _smallest_dtype(pipeline.vocab_size(cfg))
        for split in SPLITS:
            _write_split(cfg, split, os.path.join(staging, split), dtype)
        _replace_directory(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _write_split(cfg, split: str, directory: str, dtype) -> None:
    os.makedirs(directory)
    tokens = split_tokens(cfg, split)
    targets, positions = packed_rows(dataclasses.replace(cfg, packing=True), split)
    np.save(os.path.join(directory, "tokens.npy"), tokens.astype(dtype))
    np.save(os.path.join(directory, "packed_targets.npy"), targets.astype(dtype))
    np.save(os.path.join(directory, "packed_positions.npy"), positions.astype(np.uint16
                                                                            if cfg.seq_len < 65536
                                                                            else np.int32))
    meta = {"format": FORMAT_VERSION, "split": split, "corpus": cfg.corpus, "vocab": cfg.vocab,
            "vocab_model": cfg.vocab_model, "vocab_size": pipeline.vocab_size(cfg),
            "train_fraction": cfg.train_fraction, "seq_len": cfg.seq_len, "tokens": len(tokens),
            "packed_rows": len(targets)}
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)


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
    import argparse
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
