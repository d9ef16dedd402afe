"""Entry point: ``python -m launch.main --config=experiments/<file>.py[:<variant>] --workdir=<dir>
[--config.<key>=<value> ...]``. Dispatches on ``config.mode``."""
from __future__ import annotations


from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = FLAGS.config
    common.validate_top_level(config)
    common.setup_logging(FLAGS.workdir)
    mode = config.mode
    if mode == "pretrain":
        from lm.train.loop import pretrain
        result = pretrain(config, FLAGS.workdir)
    elif mode == "eval":
        from lm.train.loop import evaluate_checkpoint
        result = evaluate_checkpoint(config, FLAGS.workdir)
    else:
        raise app.UsageError(f"config.mode={mode!r} is not one of: {', '.join(common.MODES)}")
    summary = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in sorted(result.items()))
    print(f"done: {summary}", flush=True)


def run() -> None:
    common.main_with_clear_errors(lambda: app.run(main))


if __name__ == "__main__":
    run()
