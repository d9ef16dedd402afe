"""PEFT step time against full fine-tuning of the same model, side by side in one run.

    python benchmarks/peft_step.py [--steps=30] [--repeats=3] [--methods=full,lora,...]

Builds the train step of ``experiments/sft_arithmetic.py`` (the demo model, batch 32 x 64) for
each method of the PEFT sweep (``experiments/ablations/peft.py``: LoRA on attention, LoRA on
attention + MLP, adapters, prefix, prompt) and full fine-tuning, compiles each, then times
``--steps`` steps per method in ``--repeats`` rounds that alternate the methods (so that machine
noise falls on all of them alike) and keeps each method's best round. Prints the step time, its
ratio to full fine-tuning, the trainable parameters and the optimizer-state bytes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import sft_arithmetic  # noqa: E402
from experiments.ablations import peft as peft_sweep  # noqa: E402
from lm.data.loader import to_global  # noqa: E402
from lm.train.trainer import Trainer  # noqa: E402


def method_config(name: str, method: str, lr: float, extra: dict):
    config = sft_arithmetic.get_config()
    config.data.backend = "synthetic"  # speed does not depend on the data
    config.peft.method, config.optimizer.lr = method, lr
    for key, value in extra.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def build(config):
    trainer = Trainer(config, "")
    batch = to_global(next(trainer.train_iterator()), trainer.batch_sharding)
    state = trainer.init_state()
    state, metrics = trainer.train_step(state, batch)  # compile
    jax.block_until_ready(metrics)
    return trainer, state, batch


def time_steps(trainer, state, batch, steps: int):
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    return state, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="")
    args = parser.parse_args()
    wanted = set(filter(None, args.methods.split(",")))
    methods = [m for m in peft_sweep.METHODS if not wanted or m[0] in wanted]
    built = {name: build(method_config(name, method, lr, extra)) for name, method, lr, extra in methods}
    best = {name: float("inf") for name in built}
    for _ in range(args.repeats):
        for name, (trainer, state, batch) in built.items():
            state, seconds = time_steps(trainer, state, batch, args.steps)
            built[name] = (trainer, state, batch)
            best[name] = min(best[name], seconds)
    full = best.get("full", float("nan"))
    print(f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s); "
          f"best of {args.repeats} rounds of {args.steps} steps")
    print("| method | step (ms) | vs full fine-tuning | trainable parameters | optimizer state (bytes) |")
    print("|---|---:|---:|---:|---:|")
    for name, (trainer, _, _) in built.items():
        summary = trainer.peft_summary()
        print(f"| {name} | {1000 * best[name]:.2f} | {best[name] / full:.2f}x | "
              f"{summary['peft/trainable_params']:,} | {summary['peft/optimizer_state_bytes']:,} |")
    assert np.isfinite(full), "include 'full' in --methods for the ratios"


if __name__ == "__main__":
    main()
