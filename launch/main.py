"""Entry point: ``python -m launch.main --config=experiments/<file>.py[:<variant>] --workdir=<dir>
[--config.<key>=<value> ...]``. Dispatches on ``config.mode`` (``sample``: continue
``config.sample.prompt``, or every stdin line with ``--interactive``, by the latest checkpoint)."""
from __future__ import annotations

import json
import os

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
    from lm.parallel.distributed import initialize
    initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    config = FLAGS.config
    common.validate_top_level(config)
    common.setup_logging(FLAGS.workdir)
    mode = config.mode
    if mode == "pretrain":
        from lm.train.loop import pretrain
        result = pretrain(config, FLAGS.workdir)
    elif mode == "sft":
        from lm.train.sft import sft
        result = sft(config, FLAGS.workdir)
    elif mode == "eval":
        from lm.eval.runner import evaluate_workdir
        result = evaluate_workdir(config, FLAGS.workdir)
    elif mode == "sample":
        from lm.infer.session import sample_workdir
        result = sample_workdir(config, FLAGS.workdir, FLAGS.interactive)
    elif mode == "compile":
        from launch.compile import run as compile_only
        result = compile_only(config)
        with open(os.path.join(FLAGS.workdir, "compile.json"), "w") as f:
            json.dump(result, f, indent=2)
        return
    else:
        raise app.UsageError(f"config.mode={mode!r} is not one of: {', '.join(common.MODES)}")
    summary = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in sorted(result.items()))
    print(f"done: {summary}", flush=True)


def run() -> None:
    common.main_with_clear_errors(lambda: app.run(main))


if __name__ == "__main__":
    run()
