"""Compile-only: lower and compile the train step for a mesh without allocating any parameters.

Reports, per device, the bytes XLA plans for the step's arguments (parameters, optimizer state,
batch), outputs and temporaries, the FLOPs of one step from XLA's cost analysis, and how many
collectives of each kind the partitioned program contains. Used to size a layout for a pod on
a laptop: with ``--xla_force_host_platform_device_count=N`` any mesh shape can be compiled on CPU.
"""
from __future__ import annotations

import collections
import json
import os
import re
import time

import jax
import numpy as np

from lm.data.pipeline import BATCH_KEYS
from lm.train.trainer import Trainer

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def run_compile(config, workdir: str = "", devices=None) -> dict:
    """``config.mode='compile'``: the report of the train step compiled for the configured mesh,
    printed and (with a workdir) written to ``<workdir>/compile.json``."""
    from lm.fileio import write_atomically

    report = compile_report(Trainer(config, workdir="", devices=devices))
    print(format_report(report), flush=True)
    if workdir:
        write_atomically(os.path.join(workdir, "compile.json"), json.dumps(report, indent=2) + "\n")
    return report


def abstract_batch(trainer: Trainer) -> dict:
    data = trainer.exp.data
    shape = (data.batch_size, data.seq_len)
    dtypes = {"weights": np.float32}
    return {key: jax.ShapeDtypeStruct(shape, dtypes.get(key, np.int32),
                                      sharding=trainer.batch_sharding) for key in BATCH_KEYS}


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective ops in the optimized (partitioned) HLO, by kind; async pairs count once."""
    counts = collections.Counter()
    for kind in COLLECTIVES:
        counts[kind] = len(re.findall(rf"= [^=]*? {kind}(?:-start)?\(", hlo_text))
    return dict(counts)


def compile_report(trainer: Trainer) -> dict:
    start = time.perf_counter()
    lowered = trainer.train_step.lower(trainer.abstract_state, abstract_batch(trainer))
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    report = {
        "devices": int(trainer.mesh.devices.size),
        "mesh": dict(trainer.mesh.shape),
        "rules": trainer.exp.mesh.rules,
        "num_params": trainer.num_params,
        "compile_seconds": round(seconds, 1),
        "flops_per_step_per_device": float(cost.get("flops", float("nan"))) if cost else None,
        "model_flops_per_step": trainer.flops_per_token * trainer.exp.data.batch_size
        * trainer.exp.data.seq_len,
        "collectives": count_collectives(compiled.as_text()),
    }
    if memory is not None:
        report.update({
            "argument_bytes_per_device": int(memory.argument_size_in_bytes),
            "output_bytes_per_device": int(memory.output_size_in_bytes),
            "temp_bytes_per_device": int(memory.temp_size_in_bytes),
            "alias_bytes_per_device": int(memory.alias_size_in_bytes),
        })
    return report


def format_report(report: dict) -> str:
    gib = 2 ** 30
    lines = [f"compiled for {report['devices']} devices, mesh "
             + ", ".join(f"{k}={v}" for k, v in report["mesh"].items() if v > 1)
             + f" (rules {report['rules']}), {report['num_params'] / 1e9:.3f}B parameters, "
             f"in {report['compile_seconds']} s"]
    if "argument_bytes_per_device" in report:
        lines.append(
            f"per device: arguments {report['argument_bytes_per_device'] / gib:.3f} GiB "
            f"(parameters + optimizer state + batch), outputs "
            f"{report['output_bytes_per_device'] / gib:.3f} GiB, temporaries "
            f"{report['temp_bytes_per_device'] / gib:.3f} GiB")
    if report["flops_per_step_per_device"] is not None:
        # XLA's cost analysis counts a loop body once, so with scanned layers it undercounts.
        lines.append(f"FLOPs per step per device: XLA cost analysis "
                     f"{report['flops_per_step_per_device']:.4g} (loop bodies counted once); model "
                     f"6N + 12LHQT {report['model_flops_per_step'] / report['devices']:.4g}")
    lines.append("collectives: " + ", ".join(f"{k} {v}" for k, v in report["collectives"].items()))
    return "\n".join(lines)
