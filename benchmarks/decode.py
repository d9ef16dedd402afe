"""Decoding speed: tokens/s of the cached decoder (lm/infer/decode.py) against the sliding-window
sampler without a cache (lm/infer/sample.py), batch 1 and 32, for a tiny_char-sized model.

    python benchmarks/decode.py [--new_tokens=256] [--prompt_len=32] [--batches=1,32]

Both paths sample at temperature 0.8 from the same random-initialised model; each is compiled
and run once before the timed runs (best of ``--repeats``). Without the cache every new token
re-reads a window of prompt + new tokens, as the training-time sampler did. The last lines give
the cached tokens/s of the largest batch over the smallest, and cached over uncached per batch.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs import models as presets  # noqa: E402
from lm.infer import sample as sliding  # noqa: E402
from lm.infer.decode import DecodeSettings, generate  # noqa: E402
from lm.models import ModelConfig, build  # noqa: E402

VOCAB = 65  # nanoGPT's Shakespeare characters


def model_for(context: int):
    fields = presets.tiny_char().to_dict()
    cfg = ModelConfig(**{**fields, "vocab_size": VOCAB, "max_len": context}).validated()
    graphdef, state = nnx.split(build(cfg))
    return graphdef, state.to_pure_dict()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def best_time(fn, repeats: int) -> float:
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    context = prompt_len + new_tokens
    graphdef, params = model_for(context)
    rng = np.random.RandomState(0)
    prompts = rng.randint(3, VOCAB, (batch, prompt_len)).tolist()
    settings = DecodeSettings(max_new_tokens=new_tokens, temperature=0.8, seed=0)

    def cached():
        generation = generate(graphdef, params, prompts, settings)
        assert all(len(row) == new_tokens for row in generation.tokens)

    def uncached():
        sliding.generate(graphdef, params, prompts[0], new_tokens, context, temperature=0.8,
                         num_samples=batch)

    with_cache = best_time(cached, repeats)
    without = best_time(uncached, repeats)
    tokens = batch * new_tokens
    return {"batch": batch, "with_cache": tokens / with_cache, "without_cache": tokens / without,
            "speedup": without / with_cache}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}; tiny_char (4 layers, d_model 128, "
          f"vocab {VOCAB}), prompt {args.prompt_len}, {args.new_tokens} new tokens")
    print(f"{'batch':>5}  {'with cache tok/s':>16}  {'without cache tok/s':>19}  {'speedup':>7}")
    rows = []
    for batch in map(int, args.batches.split(",")):
        rows.append(run(batch, args.prompt_len, args.new_tokens, args.repeats))
        row = rows[-1]
        print(f"{row['batch']:>5}  {row['with_cache']:>16,.0f}  {row['without_cache']:>19,.0f}  "
              f"{row['speedup']:>6.1f}x", flush=True)
    print_ratios(rows)


def print_ratios(rows: list[dict]) -> None:
    """Cached tokens/s of the largest batch over the smallest; cached over uncached per batch."""
    small, large = min(rows, key=lambda r: r["batch"]), max(rows, key=lambda r: r["batch"])
    if large is not small:
        print(f"batch {large['batch']} / batch {small['batch']} (with cache): "
              f"{large['with_cache'] / small['with_cache']:.1f}x")
    print("cached / uncached: " + ", ".join(f"batch {r['batch']} {r['speedup']:.1f}x" for r in rows))


if __name__ == "__main__":
    main()
