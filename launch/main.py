"""Entry point: ``python -m launch.main --config=experiments/<file>.py[:<variant>] --workdir=<dir>
[--config.<key>=<value> ...]``. Dispatches on ``config.mode`` through the one mode table,
``lm.modes`` (``sample``: continue ``config.sample.prompt``, or every stdin line with
``--interactive``, by the latest checkpoint; ``eval`` and ``sample`` take the model and data from
the workdir's config.json)."""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for a multi-process run ('auto' on TPU pods / SLURM); "
                    "default: $LM_COORDINATOR_ADDRESS, else a single-process run.")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run ($LM_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's index ($LM_PROCESS_ID).")
flags.DEFINE_bool("interactive", False, "config.mode=sample: continue each line read from stdin "
                  "until EOF instead of config.sample.prompt.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lm import modes
    from lm.parallel.distributed import initialize
    config = FLAGS.config
    entry = modes.validate(config)  # every section the mode reads, before any work starts
    if not entry.reads_workdir:  # modes that use a trained run check what they write themselves
        common.check_writable(FLAGS.workdir, "--workdir")
    initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    common.setup_logging()
    options = {"interactive": FLAGS.interactive,
               "overrides": config_flags.get_override_values(FLAGS["config"])}
    result = entry.run(config, FLAGS.workdir, **common.accepted(entry.run, options))
    summary = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in sorted(result.items()) if not isinstance(v, (dict, list)))
    print(f"done: {summary}", flush=True)


def run() -> None:
    common.run_app(main)


if __name__ == "__main__":
    run()
