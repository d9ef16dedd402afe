"""Compile the train step for a mesh without allocating parameters; print memory, FLOPs, collectives.

    python -m launch.compile --config=experiments/palm.py:8b --fake_devices=64 \
        --config.mesh.fsdp=16 --config.mesh.tensor=4

``--fake_devices=N`` compiles for N CPU devices (a pod-sized mesh on a laptop).
``--decode_batch=B --decode_length=S`` also sizes cached decoding (parameters and a B x S KV
cache per device, one decode step's memory plan; ``--notrain`` skips the train step). The same report
comes from ``python -m launch.main ... --config.mode=compile`` on the real devices.
"""
from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file (path[:variant]).", lock_config=True)
flags.DEFINE_integer("fake_devices", 0, "Compile for this many fake CPU devices (0: real devices).")
flags.DEFINE_string("output", "", "Also write the report as JSON to this path.")
flags.DEFINE_integer("decode_batch", 0, "Also size cached decoding of this many rows (0: skip).")
flags.DEFINE_integer("decode_length", 2048, "Cache slots per row for --decode_batch.")
flags.DEFINE_bool("train", True, "Compile the train step (--notrain: only the decode sizing).")
flags.mark_flags_as_required(["config"])


def use_fake_devices(count: int) -> None:
    """Must run before the first JAX computation: the CPU backend reads XLA_FLAGS once."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={count}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv) -> None:
    del argv
    if FLAGS.fake_devices:
        use_fake_devices(FLAGS.fake_devices)
    config = FLAGS.config
    common.validate_top_level(config)
    if FLAGS.output:
        common.check_writable(FLAGS.output, "--output", folder=False)
    common.setup_logging()
    report = {}
    if FLAGS.train:
        from lm.train.compile_only import run_compile
        report.update(run_compile(config))
    if FLAGS.decode_batch:
        from lm.infer.sizing import decode_report, format_decode_report
        from lm.train.run import Run
        decoding = decode_report(Run(config), FLAGS.decode_batch, FLAGS.decode_length)
        print(format_decode_report(decoding), flush=True)
        report.update(decoding)
    if FLAGS.output:
        from lm.fileio import write_atomically
        write_atomically(FLAGS.output, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    common.run_app(main, output_flag="--output")
