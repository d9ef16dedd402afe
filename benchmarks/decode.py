"""Decoding speed: tokens/s of the cached decoder (lm/infer/decode.py) against the sliding-window
sampler without a cache (lm/infer/sample.py), batch 1 and 32, for a tiny_char-sized model.

    python benchmarks/decode.py [--new_tokens=256] [--prompt_len=32] [--batches=1,32]
    python benchmarks/decode.py --num_layers=8 --d_model=512 --num_heads=8 --cached_only

The second form sizes the model past the CPU's last-level cache (25M parameters, 100 MB), the
regime of real decoding, where a batch-1 step is bound by reading the weights.

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


def model_for(context: int, shape: dict):
    fields = {**presets.tiny_char().to_dict(), **shape}
    cfg = ModelConfig(**{**fields, "vocab_size": VOCAB, "max_len": context})
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


def matmul_step_seconds(params, batch: int, steps: int = 20) -> float:
    """Seconds for one pass of ``batch`` rows through every weight matrix, attention left out:
    the floor under a cached decoding step (a batch-1 step reads every weight once)."""
    weights = [w.reshape(-1, w.shape[-1]) for w in jax.tree.leaves(params) if w.ndim >= 2]

    @jax.jit
    def passes(rows):
        def one(_, rows):  # each pass feeds the next, so XLA cannot hoist it out of the loop
            total = sum(jax.numpy.sum(rows[:, :w.shape[0]] @ w) for w in weights)
            return rows + 1e-9 * total
        return jax.lax.fori_loop(0, steps, one, rows)

    widest = max(w.shape[0] for w in weights)
    rows = jax.numpy.ones((batch, widest), jax.numpy.float32) * 1e-3
    passes(rows).block_until_ready()
    start = time.perf_counter()
    passes(rows).block_until_ready()
    return (time.perf_counter() - start) / steps


def run(batch: int, prompt_len: int, new_tokens: int, repeats: int, shape: dict,
        cached_only: bool) -> dict:
    context = prompt_len + new_tokens
    graphdef, params = model_for(context, shape)
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
    without = float("nan") if cached_only else best_time(uncached, repeats)
    tokens = batch * new_tokens
    return {"batch": batch, "with_cache": tokens / with_cache, "without_cache": tokens / without,
            "speedup": without / with_cache,
            "matmul_only": batch / matmul_step_seconds(params, batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--num_kv_heads", type=int, default=0, help="0: one per query head")
    parser.add_argument("--cached_only", action="store_true",
                        help="skip the sliding-window sampler (slow for large models)")
    args = parser.parse_args()
    shape = {"num_layers": args.num_layers, "d_model": args.d_model, "num_heads": args.num_heads,
             "num_kv_heads": args.num_kv_heads}
    print(f"{cpu_name()}, {os.cpu_count()} cores, jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; tiny_char shape with {args.num_layers} layers, d_model "
          f"{args.d_model}, {args.num_heads} heads ({args.num_kv_heads or args.num_heads} KV), "
          f"vocab {VOCAB}, prompt {args.prompt_len}, {args.new_tokens} new tokens")
    print(f"{'batch':>5}  {'with cache tok/s':>16}  {'without cache tok/s':>19}  {'speedup':>7}  "
          f"{'matmuls only tok/s':>18}")
    rows = []
    for batch in map(int, args.batches.split(",")):
        rows.append(run(batch, args.prompt_len, args.new_tokens, args.repeats, shape,
                        args.cached_only))
        row = rows[-1]
        print(f"{row['batch']:>5}  {row['with_cache']:>16,.0f}  {row['without_cache']:>19,.0f}  "
              f"{row['speedup']:>6.1f}x  {row['matmul_only']:>18,.0f}", flush=True)
    print_ratios(rows)


def print_ratios(rows: list[dict]) -> None:
    """Cached tokens/s of the largest batch over the smallest; cached over uncached per batch."""
    small, large = min(rows, key=lambda r: r["batch"]), max(rows, key=lambda r: r["batch"])
    if large is not small:
        print(f"batch {large['batch']} / batch {small['batch']} (with cache): "
              f"{large['with_cache'] / small['with_cache']:.1f}x; the weights' matmuls alone, the "
              f"ceiling of this machine: {large['matmul_only'] / small['matmul_only']:.1f}x")
    if not any(np.isnan(r["speedup"]) for r in rows):
        print("cached / uncached: "
              + ", ".join(f"batch {r['batch']} {r['speedup']:.1f}x" for r in rows))


if __name__ == "__main__":
    main()
