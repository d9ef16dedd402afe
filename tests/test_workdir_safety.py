"""A workdir holds one training run at a time, and its metrics.jsonl stays strict JSON lines
whatever happened to the run before."""
import json
import math
import os

import jax
import pytest

from lm.train import loop
from lm.train.lock import LOCK_FILE, WorkdirInUse, workdir_lock
from lm.train.metrics import MetricsWriter, read_metrics
from tests.helpers import run_module, small_config


def test_a_second_run_on_a_locked_workdir_is_refused_and_writes_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with workdir_lock(workdir):
        with pytest.raises(WorkdirInUse, match=rf"{workdir} is in use by another training run "
                                               rf"\(pid {os.getpid()} on .*\); wait"):
            loop.pretrain(small_config(steps=2), workdir, jax.devices()[:1])
        assert sorted(os.listdir(workdir)) == [LOCK_FILE]
    # Released: the same run now trains, and leaves the lock file without a holder.
    loop.pretrain(small_config(steps=2), workdir, jax.devices()[:1])
    assert os.path.isdir(os.path.join(workdir, "checkpoints"))
    assert open(os.path.join(workdir, LOCK_FILE)).read() == ""


def test_the_lock_file_of_a_killed_run_is_taken_over(tmp_path, caplog):
    """flock dies with its process: a lock file that names a holder but is not locked is stale."""
    workdir = str(tmp_path)
    with open(os.path.join(workdir, LOCK_FILE), "w") as f:
        json.dump({"pid": 999999, "host": "gone", "since": "2026-01-01T00:00:00"}, f)
    with caplog.at_level("WARNING", logger="lm.train.lock"):
        with workdir_lock(workdir):
            holder = json.load(open(os.path.join(workdir, LOCK_FILE)))
            assert holder["pid"] == os.getpid()
    assert "pid 999999 on gone" in caplog.text


def test_the_launcher_refuses_a_locked_workdir_in_one_line(tmp_path):
    workdir = str(tmp_path)
    with workdir_lock(workdir):
        done = run_module("launch.main", "--config=experiments/shakespeare_char.py:smoke",
                          f"--workdir={workdir}", "--config.data.backend=synthetic")
    assert done.returncode == 2, done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "is in use by another training run" in error[0]
    assert "Traceback" not in done.stderr


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(1, {"train/loss": float("nan"), "train/grad_norm": float("inf"), "x": 2.5})
    writer.close()
    line = (tmp_path / "metrics.jsonl").read_text()

    def refuse(constant):
        raise ValueError(f"bare {constant} in metrics.jsonl")
    row = json.loads(line, parse_constant=refuse)
    assert row == {"step": 1, "train/loss": None, "train/grad_norm": None, "x": 2.5}
    (read,) = read_metrics(str(tmp_path))
    assert math.isnan(read["train/loss"]) and read["x"] == 2.5


@pytest.mark.parametrize("tail,kept", [('{"step": 3, "train/lo', 2), ('{"step": 3, "x": 1.0}', 3)],
                         ids=["torn", "whole row without its newline"])
def test_the_last_line_a_killed_run_left_is_repaired_before_new_rows(tmp_path, tail, kept):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x": 1.0}\n' + tail)
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3][:kept]  # reading skips it
    writer = MetricsWriter(str(tmp_path))
    writer.write(4, {"x": 4.0})
    writer.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3][:kept] + [4]


@pytest.mark.parametrize("args", [
    ["--config.mode=sample"],        # a trained run that is not there
    ["--config.train.steps=0"],      # a config refused before any work
], ids=["sample of a missing run", "rejected config"])
def test_a_failed_launch_leaves_no_empty_workdir(tmp_path, args):
    workdir = tmp_path / "never"
    done = run_module("launch.main", "--config=experiments/shakespeare_char.py:smoke",
                      f"--workdir={workdir}", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not workdir.exists()
