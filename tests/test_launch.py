"""The command-line entry points, end to end, as a user runs them."""
import json
import os
import re

from tests.helpers import ROOT, run_module

SMOKE = "--config=experiments/shakespeare_char.py:smoke"


def test_main_trains_then_evaluates_and_samples_without_repeating_overrides(tmp_path):
    """Trained with an override (RoPE), a workdir is evaluated and sampled with the experiment
    file alone: the model comes from its config.json. Changing the model there is refused."""
    workdir = str(tmp_path / "run")
    done = run_module("launch.main", SMOKE, f"--workdir={workdir}", "--config.train.progress=False",
                      "--config.model.positions=rope")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval/loss" in done.stdout and "--- sample at step 20 ---" in done.stderr + done.stdout
    for name in ("config.json", "metrics.jsonl", "samples.txt", "loss.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    sampled = run_module("launch.main", SMOKE, f"--workdir={workdir}", "--config.mode=sample",
                         "--config.sample.prompt=ROMEO:", "--config.sample.max_new_tokens=12",
                         "--config.sample.temperature=0")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert sampled.stdout.startswith("ROMEO:") and "done: samples=1" in sampled.stdout
    refused = run_module("launch.main", SMOKE, f"--workdir={workdir}", "--config.mode=eval",
                         "--config.model.d_model=64")
    assert refused.returncode == 2 and "config.json" in refused.stderr and "Traceback" not in refused.stderr
    evaluated = run_module("launch.main", SMOKE, f"--workdir={workdir}", "--config.mode=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.load(open(os.path.join(workdir, "eval_step20.json")))
    last = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert abs(scores["eval/loss"] - [r for r in last if "eval/loss" in r][-1]["eval/loss"]) < 1e-6
    check_eval_suite_report(workdir, scores)


def check_eval_suite_report(workdir: str, scores: dict) -> None:
    """The smoke config's eval tasks (4 rows each): every task reported, and HumanEval end to end:
    the completions the tiny model wrote, run again in the sandbox, give the reported pass@1."""
    from lm.eval.humaneval import evaluate_completions, read_problems

    summary = json.load(open(os.path.join(workdir, "eval", "step20.json")))
    assert sorted(summary["tasks"]) == ["heldout_docs", "humaneval", "last_word", "next_line", "next_line_choice",
                                     "word_order_choice"]
    assert summary["validation"]["eval/loss"] == scores["eval/loss"]
    assert "| humaneval | code | 4 | pass@1 |" in open(os.path.join(workdir, "eval", "step20.md")).read()
    lines = open(os.path.join(workdir, "eval", "step20_samples", "humaneval.jsonl")).read().splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) == 4 and all(s["prediction"] for s in samples)
    completions = {s["task_id"]: [s["prediction"]] for s in samples}
    rerun = evaluate_completions(read_problems(), completions, k=(1,))
    assert scores["humaneval/pass@1"] == 100 * rerun["pass@1"]
    assert 2 ** -8 < scores["heldout_docs/bits_per_byte"] < 8


def test_compile_ngram_and_sft_modes_from_the_command_line(tmp_path):
    compiled = run_module("launch.main", SMOKE, f"--workdir={tmp_path}/compile", "--config.mode=compile")
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    report = json.load(open(tmp_path / "compile" / "compile.json"))
    assert report["num_params"] > 0 and "all-reduce" in report["collectives"]
    ngram = run_module("launch.main", SMOKE, f"--workdir={tmp_path}/ngram", "--config.mode=ngram")
    assert ngram.returncode == 0, ngram.stderr[-3000:]
    assert os.path.exists(tmp_path / "ngram" / "result_ngram.json")
    bad = run_module("launch.main", "--config=experiments/sft_arithmetic.py:smoke",
                     f"--workdir={tmp_path}/sft", f"--config.init_from={tmp_path}/base",
                     "--config.peft.method=lora", "--config.peft.lora_rank=0")
    assert bad.returncode == 2 and "lora_rank" in bad.stderr, bad.stderr[-2000:]
    assert not os.path.exists(tmp_path / "base"), "a bad PEFT section must fail before pretraining"
    wrong = run_module("launch.main", SMOKE, f"--workdir={tmp_path}/x", "--config.mode=evl")
    assert wrong.returncode == 2 and "Did you mean 'eval'" in wrong.stderr


def test_unknown_override_key_names_close_match(tmp_path):
    done = run_module("launch.main", SMOKE, f"--workdir={tmp_path}", "--config.train.stpes=3")
    assert done.returncode != 0
    assert "Did you mean \"steps\"" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_missing_corpus_is_a_clear_error(tmp_path):
    done = run_module("launch.main", SMOKE, f"--workdir={tmp_path}",
                      f"--config.data.corpus={tmp_path}/missing.txt")
    assert done.returncode == 2
    assert "missing.txt" in done.stderr and "Traceback" not in done.stderr


def test_bench_runs_without_tensorflow(tmp_path):
    # A 'tensorflow' package that fails on import: the bench must never need it.
    blocker = tmp_path / "tensorflow"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('tensorflow is blocked in this test')\n")
    env_path = f"{tmp_path}{os.pathsep}{ROOT}"
    done = run_module("launch.bench", SMOKE, "--steps=3", "--warmup=1", "--repeats=1",
                      env={"PYTHONPATH": env_path})
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"tokens_per_sec=([\d.]+) mfu=([\d.]+)", last)
    assert match and float(match.group(1)) > 0 and 0 < float(match.group(2)) < 1, last


def test_pod_launchers_dry_run_print_the_exact_commands():
    main_args = ["--", "--config=experiments/palm.py:8b", "--workdir=/mnt/shared/runs/p",
                 "--config.mesh.tensor=4"]
    tpu = run_module("launch.tpu", "--tpu=pod", "--zone=us-central2-b", "--dry_run", *main_args)
    assert tpu.returncode == 0, tpu.stderr[-2000:]
    lines = tpu.stdout.strip().splitlines()
    assert lines[0].startswith("tar -czf ") and "--exclude=.venv" in lines[0]  # tests/test_tpu_launch.py
    assert lines[1].startswith("gcloud compute tpus tpu-vm scp ") and " 'pod:~/lm.tar.gz' " in lines[1]
    assert lines[2].startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all")
    assert "tar -xzf ~/lm.tar.gz -C ~/lm" in lines[2]
    assert "LM_COORDINATOR_ADDRESS=auto python3 -m launch.main --config=experiments/palm.py:8b" in lines[2]

    slurm = run_module("launch.slurm", "--nodes=4", "--gpus_per_node=8", "--dry_run", *main_args)
    assert slurm.returncode == 0, slurm.stderr[-2000:]
    assert "#SBATCH --nodes=4" in slurm.stdout and "#SBATCH --gpus-per-node=8" in slurm.stdout
    assert ("srun --kill-on-bad-exit=1 bash -c 'LM_COORDINATOR_ADDRESS=auto python3 -m launch.main "
            "--config=experiments/palm.py:8b --workdir=/mnt/shared/runs/p --config.mesh.tensor=4'"
            ) in slurm.stdout
