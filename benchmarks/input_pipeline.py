"""Input-pipeline throughput: batches per second from the pre-tokenized cache and from seqio.

    python benchmarks/input_pipeline.py [--batch_size=64 --seq_len=1024 --seconds=3]

Prints tokens/s of host batches (every field the train step consumes) for: packed rows from the
memory-mapped cache, nanoGPT windows from the cache, the in-memory NumPy backend, and the seqio
(tf.data) backend. Compare with the train step's tokens/s: the input must never be the bottleneck.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm.data import cache, pipeline  # noqa: E402


def rate(make_batch, tokens_per_batch: int, seconds: float) -> float:
    make_batch(0)  # warm up (page cache, tf.data start-up)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        make_batch(count + 1)
        count += 1
    return count * tokens_per_batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--skip_seqio", action="store_true")
    args = parser.parse_args()
    b, t = args.batch_size, args.seq_len
    cfg = pipeline.DataConfig(corpus="shakespeare", vocab="sentencepiece", seq_len=t, batch_size=b)
    directory = cache.build_cache(cfg, os.path.join(tempfile.mkdtemp(), "cache"))
    cached = cache.TokenCache(directory)
    rows = lambda i: np.arange(i * b, (i + 1) * b)  # noqa: E731
    results = {
        "cache, packed rows": rate(lambda i: cached.packed_batch(rows(i)), b * t, args.seconds),
        "cache, random windows": rate(lambda i: cached.window_batch(0, rows(i), t), b * t,
                                      args.seconds),
    }
    array_iter = pipeline.make_train_iterator(cfg, seed=0)
    results["in-memory NumPy backend, windows"] = rate(lambda i: next(array_iter), b * t,
                                                       args.seconds)
    if not args.skip_seqio:
        seqio_iter = pipeline.make_train_iterator(
            pipeline.DataConfig(corpus="shakespeare", vocab="sentencepiece", seq_len=t,
                                batch_size=b, backend="seqio"), seed=0)
        results["seqio (tf.data) backend, windows"] = rate(lambda i: next(seqio_iter), b * t,
                                                           args.seconds)
    print(f"batch {b} x {t} tokens, SentencePiece 1024 vocabulary, {os.cpu_count()} cores")
    for name, tokens_per_sec in results.items():
        print(f"{name:36s} {tokens_per_sec:>14,.0f} tokens/s")


if __name__ == "__main__":
    main()
