"""launch.tpu copies code, not the virtual environment, runs or git history, to every worker."""
import shlex
import subprocess
import tarfile

from tests.helpers import run_module

MAIN_ARGS = ["--", "--config=experiments/palm.py:8b", "--workdir=/mnt/shared/runs/p"]

# A checkout with what must travel and what must not, at the top and deeper down.
KEPT = ["setup.py", "lm/__init__.py", "lm/train/fit.py", "experiments/palm.py", "tests/data/a.txt",
        "docs/results/ablations/scaling/runs.md", "lm/runs_helper.py"]
EXCLUDED = [".venv/lib/python3.11/site-packages/jax/__init__.py", "runs/demo/metrics.jsonl",
            ".git/HEAD", "lm/__pycache__/fit.cpython-311.pyc", "lm.egg-info/PKG-INFO",
            "build/lib/lm/__init__.py", "dist/lm-0.1.tar.gz", ".pytest_cache/v/cache/nodeids",
            ".ruff_cache/0.17.6/x", "lm/train/stale.pyc", "experiments/.ipynb_checkpoints/x.py"]


def dry_run_commands(*flags: str) -> list[list[str]]:
    done = run_module("launch.tpu", "--tpu=pod", "--zone=us-central2-b", "--dry_run", *flags,
                      *MAIN_ARGS, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [shlex.split(line) for line in done.stdout.strip().splitlines()]


def test_pack_command_leaves_out_environment_runs_git_and_build_outputs(tmp_path):
    checkout = tmp_path / "checkout"
    for name in KEPT + EXCLUDED:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(name)
    pack, scp, ssh = dry_run_commands()
    archive = tmp_path / "code.tar.gz"
    pack[pack.index("-czf") + 1] = str(archive)  # the command as built, into a known place
    subprocess.run(pack, cwd=checkout, check=True)
    with tarfile.open(archive) as packed:
        files = {name.removeprefix("./") for name in packed.getnames()
                 if packed.getmember(name).isfile()}
    assert files == set(KEPT)


def test_archive_goes_to_every_worker_and_is_unpacked_before_the_run():
    pack, scp, ssh = dry_run_commands("--remote_dir=~/code")
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5] == pack[pack.index("-czf") + 1]
    assert scp[6] == "pod:~/code.tar.gz" and "--worker=all" in scp
    script = next(arg for arg in ssh if arg.startswith("--command=")).removeprefix("--command=")
    steps = script.split(" && ")
    assert steps[:4] == ["mkdir -p ~/code", "tar -xzf ~/code.tar.gz -C ~/code", "rm -f ~/code.tar.gz",
                         "cd ~/code"]
    assert steps[-1].startswith("LM_COORDINATOR_ADDRESS=auto python3 -m launch.main --config=")


def test_without_sync_nothing_is_packed_or_copied():
    (ssh,) = dry_run_commands("--nosync")
    script = next(arg for arg in ssh if arg.startswith("--command="))
    assert "tar" not in script and script.startswith("--command=cd ~/lm && ")
