"""Run an experiment on every worker of a Cloud TPU pod slice.

    python -m launch.tpu --tpu=my-v4-128 --zone=us-central2-b --dry_run -- \
        --config=experiments/palm.py:8b --workdir=/mnt/shared/runs/palm8b \
        --config.mesh.fsdp=-1 --config.mesh.tensor=4

Everything after ``--`` goes to ``launch.main`` unchanged. The checkout is packed into one
archive without what is not code (``SYNC_EXCLUDES``: the virtual environment, runs, git history,
build outputs), copied to every worker (``scp``) and unpacked into ``--remote_dir``; each worker
then installs the package with TPU JAX and starts ``launch.main`` with
``LM_COORDINATOR_ADDRESS=auto``, so ``jax.distributed.initialize()`` discovers the slice's hosts
by itself. ``--dry_run`` prints the exact commands instead of running them.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

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

# tar --exclude patterns for what is never copied to the workers (gigabytes, or rebuilt there).
# A pattern without a slash matches a file or folder of that name at any depth; "./name"
# matches only at the top of the checkout (the archive is made from ".").
SYNC_EXCLUDES = (
    ".git", ".venv", "venv", "__pycache__", "*.pyc", "*.egg-info",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", ".ipynb_checkpoints",
    "./runs", "./build", "./dist", "./.whl",
)


def gcloud_base(verb: str) -> list[str]:
    base = ["gcloud", "compute", "tpus", "tpu-vm", verb, FLAGS.tpu, f"--zone={FLAGS.zone}",
            "--worker=all"]
    return base + ([f"--project={FLAGS.project}"] if FLAGS.project else [])


def remote_archive() -> str:
    """Where the archive lands on each worker: beside --remote_dir (~ expands there)."""
    return FLAGS.remote_dir.rstrip("/") + ".tar.gz"


def pack_command(archive: str) -> list[str]:
    """tar of this checkout into ``archive``, without SYNC_EXCLUDES."""
    return ["tar", "-czf", archive, *(f"--exclude={pattern}" for pattern in SYNC_EXCLUDES), "."]


def unpack_steps() -> list[str]:
    # Not quoted: --remote_dir is usually ~/..., which the worker's shell has to expand.
    return [f"mkdir -p {FLAGS.remote_dir}", f"tar -xzf {remote_archive()} -C {FLAGS.remote_dir}",
            f"rm -f {remote_archive()}"]


def worker_script(main_args: list[str]) -> str:
    steps = unpack_steps() if FLAGS.sync else []
    steps.append(f"cd {FLAGS.remote_dir}")
    if FLAGS.install:
        steps.append("pip install -q -e . 'jax[tpu]'")
    steps.append("LM_COORDINATOR_ADDRESS=auto python3 -m launch.main "
                 + " ".join(shlex.quote(a) for a in main_args))
    return " && ".join(steps)


def commands(main_args: list[str], archive: str) -> list[list[str]]:
    """The commands, in order: pack the checkout into the local ``archive`` and copy it to every
    worker (with --sync), then start the run on every worker."""
    cmds = []
    if FLAGS.sync:
        scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
               f"{FLAGS.tpu}:{remote_archive()}", f"--zone={FLAGS.zone}", "--worker=all"]
        cmds.append(pack_command(archive))
        cmds.append(scp + ([f"--project={FLAGS.project}"] if FLAGS.project else []))
    cmds.append(gcloud_base("ssh") + [f"--command={worker_script(main_args)}"])
    return cmds


def main(argv) -> None:
    main_args = argv[1:]
    if not any(a.startswith("--config=") for a in main_args):
        raise app.UsageError("give launch.main's arguments after --, e.g. -- --config=... --workdir=...")
    with tempfile.TemporaryDirectory(prefix="lm-tpu-") as scratch:
        for cmd in commands(main_args, os.path.join(scratch, "code.tar.gz")):
            print(shlex.join(cmd), flush=True)
            if not FLAGS.dry_run:
                subprocess.run(cmd, check=True)


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
