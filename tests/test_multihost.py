"""Two processes on localhost (gloo collectives) train exactly like one process with two devices."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT

ARGS = ["--config=experiments/shakespeare_char.py:smoke", "--config.data.backend=synthetic",
        "--config.data.synthetic_vocab_size=64", "--config.model.vocab_size=64",
        "--config.data.batch_size=8", "--config.model.num_layers=2", "--config.model.d_model=32",
        "--config.train.steps=6", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
        "--config.train.log_every=1", "--config.train.sample_tokens=8",
        "--config.train.progress=False"]


def _env(devices_per_process: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _last_losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return ([r["train/loss"] for r in rows if "train/loss" in r],
            [r["eval/loss"] for r in rows if "eval/loss" in r])


@pytest.mark.parametrize("multi_mesh", [
    pytest.param(["--config.mesh.data=-1"], marks=pytest.mark.slow),  # the DCN case covers two processes
    # The data axis across hosts (DCN), through mesh_utils.create_hybrid_device_mesh.
    ["--config.mesh.data=1", "--config.mesh.dcn_data=2"],
])
def test_two_processes_match_one_process_with_two_devices(tmp_path, multi_mesh):
    single = str(tmp_path / "single")
    done = subprocess.run([sys.executable, "-m", "launch.main", *ARGS, "--config.mesh.data=-1",
                           f"--workdir={single}"],
                          cwd=ROOT, env=_env(2), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    multi = str(tmp_path / "multi")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "launch.main", *ARGS, *multi_mesh,
                               f"--workdir={multi}",
                               f"--coordinator_address=localhost:{port}", "--num_processes=2",
                               f"--process_id={i}"], cwd=ROOT, env=_env(1),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "training" in outputs[0][0] and "2 cpu device(s)" in outputs[0][0]

    train_single, eval_single = _last_losses(single)
    train_multi, eval_multi = _last_losses(multi)
    assert len(train_multi) == 6 and len(eval_multi) == 2
    for a, b in zip(train_multi + eval_multi, train_single + eval_single):
        assert abs(a - b) <= 1e-5 * abs(b), (train_multi, train_single)


def _two_processes(workdir, port, steps):
    args = [*ARGS, "--config.mesh.data=-1", f"--config.train.steps={steps}",
            "--config.train.eval_every=1000", "--config.train.checkpoint_every=1000"]
    return [subprocess.Popen([sys.executable, "-m", "launch.main", *args, f"--workdir={workdir}",
                              f"--coordinator_address=localhost:{port}", "--num_processes=2",
                              f"--process_id={i}"], cwd=ROOT, env=_env(1),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    import signal
    import time
    from lm.train.checkpoint import Checkpointer
    workdir = str(tmp_path / "run")
    procs = _two_processes(workdir, _free_port(), steps=100000)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(metrics) and
                                          sum(1 for _ in open(metrics)) >= 20):
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)  # a scheduler preempting one host
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    stopped = [line for line in outputs[0][0].splitlines() if line.startswith("stopped by")]
    assert len(stopped) == 1, outputs[0][0][-2000:]
    step = int(stopped[0].split("after step ")[1].split(":")[0])
    assert 20 <= step < 100000
    assert Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == step
