"""Run an experiment on every worker of a Cloud TPU pod slice.

    python -m launch.tpu --tpu=my-v4-128 --zone=us-central2-b --dry_run -- \
        --config=experiments/palm.py:8b --workdir=/mnt/shared/runs/palm8b \
        --config.mesh.fsdp=-1 --config.mesh.tensor=4

Everything after ``--`` goes to ``launch.main`` unchanged. Each worker copies the code (``scp``),
installs the package with TPU JAX, and starts ``launch.main`` with
``LM_COORDINATOR_ADDRESS=auto``, so ``jax.distributed.initialize()`` discovers the slice's hosts
by itself. ``--dry_run`` prints the exact commands instead of running them.
"""
from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("tpu", None, "TPU VM name (gcloud compute tpus tpu-vm list).")
flags.DEFINE_string("zone", None, "Zone of the TPU VM.")
flags.DEFINE_string("project", None, "Cloud project (default: gcloud's configured one).")
flags.DEFINE_string("remote_dir", "~/lm", "Where the code goes on each worker.")
flags.DEFINE_bool("sync", True, "Copy this checkout to every worker first.")
flags.DEFINE_bool("install", True, "pip install the package with jax[tpu] on every worker.")
flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
flags.mark_flags_as_required(["tpu", "zone"])


def gcloud_base(verb: str) -> list[str]:
    base = ["gcloud", "compute", "tpus", "tpu-vm", verb, FLAGS.tpu, f"--zone={FLAGS.zone}",
            "--worker=all"]
    return base + ([f"--project={FLAGS.project}"] if FLAGS.project else [])


def worker_script(main_args: list[str]) -> str:
    steps = [f"cd {FLAGS.remote_dir}"]
    if FLAGS.install:
        steps.append("pip install -q -e . 'jax[tpu]'")
    steps.append("LM_COORDINATOR_ADDRESS=auto python3 -m launch.main "
                 + " ".join(shlex.quote(a) for a in main_args))
    return " && ".join(steps)


def commands(main_args: list[str]) -> list[list[str]]:
    cmds = []
    if FLAGS.sync:
        scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", ".",
               f"{FLAGS.tpu}:{FLAGS.remote_dir}", f"--zone={FLAGS.zone}", "--worker=all"]
        cmds.append(scp + ([f"--project={FLAGS.project}"] if FLAGS.project else []))
    cmds.append(gcloud_base("ssh") + [f"--command={worker_script(main_args)}"])
    return cmds


def main(argv) -> None:
    main_args = argv[1:]
    if not any(a.startswith("--config=") for a in main_args):
        raise app.UsageError("give launch.main's arguments after --, e.g. -- --config=... --workdir=...")
    for cmd in commands(main_args):
        print(shlex.join(cmd), flush=True)
        if not FLAGS.dry_run:
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
