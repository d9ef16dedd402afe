"""Runs an ablation sweep: ``python -m launch.sweep --config=experiments/ablations/<name>.py[:<variant>]
--workdir=<dir> [--set=train.steps=100 ...] [--dry_run]``.

Every variant runs in ``<workdir>/<variant>/``; finished variants are skipped on a second run;
the table goes to ``<workdir>/results.{csv,md}`` with PNG plots, and to stdout.
"""
from __future__ import annotations

import shlex
import sys

from absl import app, flags

from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Sweep file (path[:variant]) defining get_sweep(variant).")
flags.DEFINE_string("workdir", None, "Directory for the variants' runs and the results.")
flags.DEFINE_multi_string("set", [], "<dotted.key>=<value>: overrides every variant's config, "
                          "after (and over) the variant's own overrides (repeatable), e.g. "
                          "--set=train.steps=100.")
flags.DEFINE_bool("dry_run", False, "List the variants and their configs, then stop.")
flags.mark_flags_as_required(["config"])


def load_sweep(spec: str):
    """``path[:variant]`` -> the Sweep its ``get_sweep(variant)`` returns."""
    return common.load_config_file(spec, "get_sweep")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir and not FLAGS.dry_run:
        raise app.UsageError("--workdir is required (except with --dry_run)")
    from lm.sweep import run_sweep
    from lm.sweep.overrides import parse_assignments
    if FLAGS.workdir and not FLAGS.dry_run:
        common.check_writable(FLAGS.workdir, "--workdir")
    common.setup_logging()
    sweep = load_sweep(FLAGS.config)
    overrides = parse_assignments(FLAGS.set, sweep.base)
    command = "python -m launch.sweep " + shlex.join(sys.argv[1:])
    outcome = run_sweep(sweep, FLAGS.workdir or "", overrides, command=command,
                        dry_run=FLAGS.dry_run)
    if outcome and outcome.failed:
        print(f"error: {len(outcome.failed)} of {len(outcome.rows)} variants failed: "
              f"{', '.join(outcome.failed)} (see <variant>/error.txt)", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    common.main_with_clear_errors(lambda: app.run(main))


if __name__ == "__main__":
    run()
