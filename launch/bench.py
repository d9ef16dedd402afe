"""Times the train step after warm-up; the last line is ``tokens_per_sec=<x> mfu=<y>``.

    python -m launch.bench --config=experiments/shakespeare_char.py [--config.<key>=<value> ...]

``mfu`` is relative to the peak matmul throughput measured in this same run on this device (the
noise-robust figure on shared machines); on GPU/TPU ``mfu_vendor`` uses the datasheet peak too.
Batches are synthetic tokens shaped like the experiment's, so no TensorFlow is imported.
"""
from __future__ import annotations

import dataclasses
import time

import jax
from absl import flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file (path[:variant]).", lock_config=True)
flags.DEFINE_integer("steps", 60, "Timed train steps (after warm-up).")
flags.DEFINE_integer("warmup", 5, "Untimed steps (compile, caches).")
flags.DEFINE_integer("repeats", 3, "Timed windows of --steps; the best is reported.")
flags.DEFINE_bool("spike_overhead", False, "Also time the step without the bad-step guard "
                  "(config.train.spike_skip) in alternating windows of this same run, and print "
                  "the guard's cost as a share of the step time (its host-side reads included).")
flags.mark_flags_as_required(["config"])


def synthetic_batches(data_cfg, vocab_size: int, count: int, seed: int) -> list[dict]:
    """``count`` batches shaped like the experiment's, from the pipeline's synthetic backend."""
    from lm.data import pipeline
    cfg = dataclasses.replace(data_cfg, backend="synthetic", synthetic_vocab_size=vocab_size,
                              packing=False)
    iterator = pipeline.make_train_iterator(cfg, seed)
    return [next(iterator) for _ in range(count)]


def time_steps(trainer, state, batches, steps: int) -> tuple[float, object]:
    """Seconds per step over ``steps`` steps, waiting for the device only at the end, except
    that a guarded step's skip decision is read READ_LAG steps late, as the fit loop reads it."""
    from lm.train.fit import READ_LAG
    from lm.train.rollback import SpikeWatch
    watch = SpikeWatch("", trainer.exp.train, write=False)
    start, pending = time.perf_counter(), []
    for step, batch in enumerate(batches[:steps]):
        state, metrics = trainer.train_step(state, batch)
        pending.append(metrics)
        if len(pending) > READ_LAG:
            watch.observe(step, pending.pop(0))
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps, state


def memory_report(trainer, state, batch) -> str:
    compiled = trainer.train_step.lower(state, batch).compile()
    mem = compiled.memory_analysis()
    if mem is None:
        return "memory analysis unavailable on this backend"
    return (f"per-device bytes: arguments={mem.argument_size_in_bytes:,} "
            f"outputs={mem.output_size_in_bytes:,} temporaries={mem.temp_size_in_bytes:,}")


def main(argv) -> None:
    del argv
    from lm.train import hardware
    from lm.data.loader import to_global
    from lm.train.loop import Trainer
    config = FLAGS.config
    common.validate_top_level(config)
    trainer = Trainer(config, workdir="")
    exp = trainer.exp
    peak_measured = hardware.measure_peak_matmul_flops(seconds=2.0)
    peak_vendor = hardware.vendor_peak_flops()
    count = FLAGS.warmup + FLAGS.steps
    batches = [to_global(b, trainer.batch_sharding)
               for b in synthetic_batches(exp.data, exp.model.vocab_size, count, exp.seed)]
    state = trainer.init_state()
    print(memory_report(trainer, state, batches[0]))
    _, state = time_steps(trainer, state, batches, FLAGS.warmup)
    best = float("inf")
    for _ in range(FLAGS.repeats):
        seconds, state = time_steps(trainer, state, batches[FLAGS.warmup:], FLAGS.steps)
        best = min(best, seconds)
    tokens_per_sec = exp.data.batch_size * exp.data.seq_len / best
    achieved = tokens_per_sec * trainer.flops_per_token
    print(f"device={jax.devices()[0].device_kind} devices={jax.device_count()} "
          f"params={trainer.num_params:,} flops_per_token={trainer.flops_per_token:,.0f} "
          f"step_ms={best * 1e3:.2f} peak_matmul_measured={peak_measured / 1e9:.1f}GFLOP/s")
    vendor = f" mfu_vendor={achieved / peak_vendor:.4f}" if peak_vendor else ""
    if FLAGS.spike_overhead:
        print(spike_overhead(config, trainer, state, batches), flush=True)
    print(f"tokens_per_sec={tokens_per_sec:.0f} mfu={achieved / peak_measured:.4f}{vendor}", flush=True)


def spike_overhead(config, trainer, state, batches) -> str:
    """The guarded and the unguarded step timed in alternating windows (A B, B A, ...): the best
    of each, and the median ratio of the pairs, so drifts of a shared machine fall on both."""
    from lm.train.loop import Trainer
    guarded = config.train.spike_skip
    other_config = config.copy_and_resolve_references()
    with other_config.unlocked():
        other_config.train.spike_skip = not guarded
    other = Trainer(other_config, workdir="")
    other_state = other.init_state()
    _, other_state = time_steps(other, other_state, batches, FLAGS.warmup)
    timed = batches[FLAGS.warmup:]
    times: dict = {True: [], False: []}
    for repeat in range(FLAGS.repeats):
        for which in ((True, False) if repeat % 2 == 0 else (False, True)):  # A B, then B A
            if which:
                seconds, state = time_steps(trainer, state, timed, FLAGS.steps)
                times[guarded].append(seconds)
            else:
                seconds, other_state = time_steps(other, other_state, timed, FLAGS.steps)
                times[not guarded].append(seconds)
    ratios = sorted(on / off for on, off in zip(times[True], times[False]))
    median = ratios[len(ratios) // 2] - 1
    best = min(times[True]) / min(times[False]) - 1
    return (f"spike_guard step_ms_on={min(times[True]) * 1e3:.2f} "
            f"step_ms_off={min(times[False]) * 1e3:.2f} overhead_best={best * 100:+.2f}% "
            f"overhead_median_pair={median * 100:+.2f}% pairs={len(ratios)}")


if __name__ == "__main__":
    common.run_app(main)
