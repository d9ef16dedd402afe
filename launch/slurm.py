"""Run an experiment on several GPU nodes under SLURM (one process per node, all its GPUs).

    python -m launch.slurm --nodes=4 --gpus_per_node=8 --partition=a3 --dry_run -- \
        --config=experiments/gpt3_synthetic.py:1_3b --workdir=/shared/runs/gpt3 \
        --config.mesh.data=1 --config.mesh.fsdp=-1

Everything after ``--`` goes to ``launch.main``. The script hands sbatch a job script (on its
standard input) whose ``srun`` starts ``launch.main`` on every node with
``LM_COORDINATOR_ADDRESS=auto``; ``jax.distributed.initialize()`` reads the node list from
SLURM's environment. ``--dry_run`` prints the job script and the submit command instead of
submitting.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("nodes", 1, "Nodes (one process each).")
flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node.")
flags.DEFINE_string("partition", None, "SLURM partition.")
flags.DEFINE_string("time", "24:00:00", "Wall-clock limit.")
flags.DEFINE_string("job_name", "lm", "Job name.")
flags.DEFINE_string("python", "python3", "Python on the nodes (with lm installed, jax[cuda]).")
flags.DEFINE_bool("dry_run", False, "Print the sbatch file and the command; submit nothing.")


def sbatch_script(main_args: list[str]) -> str:
    directives = [f"--job-name={FLAGS.job_name}", f"--nodes={FLAGS.nodes}",
                  "--ntasks-per-node=1", f"--gpus-per-node={FLAGS.gpus_per_node}",
                  f"--time={FLAGS.time}", "--exclusive"]
    if FLAGS.partition:
        directives.append(f"--partition={FLAGS.partition}")
    run = (f"LM_COORDINATOR_ADDRESS=auto {FLAGS.python} -m launch.main "
           + " ".join(shlex.quote(a) for a in main_args))
    return "\n".join(["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail",
                      f"cd {shlex.quote(os.getcwd())}",
                      f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(run)}", ""])


def main(argv) -> None:
    main_args = argv[1:]
    if not any(a.startswith("--config=") for a in main_args):
        raise app.UsageError("give launch.main's arguments after --, e.g. -- --config=... --workdir=...")
    script = sbatch_script(main_args)
    if FLAGS.dry_run:
        print(script)
        print("sbatch <the file above>")
        return
    # sbatch reads the script from standard input when given no file: nothing is left in /tmp.
    print("sbatch < (the job script printed by --dry_run)", flush=True)
    subprocess.run(["sbatch"], input=script, text=True, check=True)


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
