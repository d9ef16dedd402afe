"""The lm-evaluation-harness adapter (lm/eval/harness.py): lm_eval's own command line, run over
the three local tasks of tests/data/lm_eval, must report the metrics that ModelScorer's answers
give under the harness's formulas; the adapter also answers Instance requests in-process."""
from __future__ import annotations

import glob
import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from lm.configlib import ConfigError
from lm.eval.scoring import ModelScorer
from lm.eval.trained import scorer_from_workdir
from tests.helpers import ROOT, run_module, small_config

TASKS_DIR = "tests/data/lm_eval"  # relative to ROOT, where the tasks' data_files are read from
TASKS = ("lm_tiny_mc", "lm_tiny_rolling", "lm_tiny_gen")
STEPS = 30
WINDOW = 32
RTOL = 1e-5
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def task_documents(task: str) -> list[dict]:
    with open(os.path.join(ROOT, TASKS_DIR, f"{task}.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def task_config(task: str) -> dict:
    with open(os.path.join(ROOT, TASKS_DIR, f"{task}.yaml")) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    """A character-level decoder trained a few steps on Shakespeare, with a 32-character window
    (shorter than the perplexity passages, so they are scored in several rolling windows)."""
    from lm.train.loop import pretrain

    config = small_config(steps=STEPS, num_layers=1, d_model=32, num_heads=2, num_kv_heads=0,
                          max_len=WINDOW, vocab_size=0)
    config.data.update(dict(backend="array", seq_len=WINDOW))
    path = str(tmp_path_factory.mktemp("harness") / "run")
    pretrain(config, path, devices=jax.devices()[:1])
    return path


@pytest.fixture(scope="module")
def scorer(workdir) -> ModelScorer:
    return scorer_from_workdir(workdir)


@pytest.fixture(scope="module")
def harness_run(workdir, tmp_path_factory) -> tuple[dict, dict]:
    """(results JSON, {task: per-document samples}) of one lm_eval command over the three tasks."""
    out = tmp_path_factory.mktemp("harness_out")
    env = {**OFFLINE, "HF_DATASETS_CACHE": str(out / "datasets_cache")}
    run = run_module("lm.eval.harness", "run", "--model", "lm",
                     "--model_args", f"workdir={workdir},batch_size=4",
                     "--tasks", *TASKS, "--include_path", TASKS_DIR,
                     "--output_path", str(out / "results"), "--log_samples", env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "lm loglikelihood" in run.stderr  # the adapter's progress bar
    folder = out / "results" / f"run_step{STEPS}"  # named after the workdir and its checkpoint
    (results_path,) = glob.glob(str(folder / "results_*.json"))
    with open(results_path) as f:
        results = json.load(f)
    samples = {}
    for task in TASKS:
        (path,) = glob.glob(str(folder / f"samples_{task}_*.jsonl"))
        with open(path) as f:
            samples[task] = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
    return results, samples


def test_results_name_the_evaluated_checkpoint(harness_run, workdir):
    results, _ = harness_run
    config = results["config"]
    assert (config["model"], config["model_workdir"]) == ("lm", workdir)
    assert config["model_step"] == STEPS
    assert (config["model_context_len"], config["model_batch_size"]) == (WINDOW, 4)
    assert set(results["results"]) == set(TASKS)
    # run_module runs on one CPU device: recorded as such, not as lm_eval's default cuda:0.
    assert (config["device"], config["model_jax_backend"], config["model_devices"]) == (
        "cpu:0", "cpu", ["cpu:0"])
    assert results["model_name"] == f"run_step{STEPS}"


def test_multiple_choice_metrics(harness_run, scorer):
    results, samples = harness_run
    documents = task_documents("lm_tiny_mc")
    correct, correct_norm = [], []
    for document, sample in zip(documents, samples["lm_tiny_mc"], strict=True):
        choices = document["choices"]
        requests = [(document["question"], " " + choice) for choice in choices]
        logliks = [loglik for loglik, _ in scorer.loglikelihood(requests)]
        logged = [float(loglik) for loglik, _ in sample["filtered_resps"]]
        np.testing.assert_allclose(logged, logliks, rtol=RTOL)
        correct.append(np.argmax(logliks) == document["label"])
        lengths = [len(choice) for choice in choices]  # characters, as lm_eval's acc_norm divides
        correct_norm.append(np.argmax(np.divide(logliks, lengths)) == document["label"])
    metrics = results["results"]["lm_tiny_mc"]
    assert metrics["acc,none"] == pytest.approx(np.mean(correct), rel=RTOL)
    assert metrics["acc_norm,none"] == pytest.approx(np.mean(correct_norm), rel=RTOL)


def test_rolling_perplexity_metrics(harness_run, scorer):
    results, samples = harness_run
    texts = [document["text"] for document in task_documents("lm_tiny_rolling")]
    assert max(len(text) for text in texts) > 2 * scorer.window  # several rolling windows
    logliks = scorer.loglikelihood_rolling(texts)
    logged = [float(sample["filtered_resps"][0]) for sample in samples["lm_tiny_rolling"]]
    np.testing.assert_allclose(logged, logliks, rtol=RTOL)
    total = sum(logliks)
    words = sum(len(re.split(r"\s+", text)) for text in texts)  # lm_eval's word count
    num_bytes = sum(len(text.encode("utf-8")) for text in texts)
    metrics = results["results"]["lm_tiny_rolling"]
    assert metrics["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=RTOL)
    assert metrics["byte_perplexity,none"] == pytest.approx(math.exp(-total / num_bytes), rel=RTOL)
    bits_per_byte = -total / (num_bytes * math.log(2))
    assert metrics["bits_per_byte,none"] == pytest.approx(bits_per_byte, rel=RTOL)


def test_generation_exact_match(harness_run, scorer):
    results, samples = harness_run
    documents = task_documents("lm_tiny_gen")
    settings = task_config("lm_tiny_gen")["generation_kwargs"]
    outputs = scorer.generate_until([(doc["prompt"], dict(settings)) for doc in documents])
    assert not any(" " in output or "\n" in output for output in outputs)  # cut at the stops
    assert [sample["filtered_resps"][0] for sample in samples["lm_tiny_gen"]] == outputs
    exact = [output == document["target"] for output, document in zip(outputs, documents)]
    metrics = results["results"]["lm_tiny_gen"]
    assert metrics["exact_match,none"] == pytest.approx(np.mean(exact), rel=RTOL)


def instances(request_type: str, arguments: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type, doc={}, arguments=args, idx=0, metadata=("test", index, 1))
            for index, args in enumerate(arguments)]


def test_adapter_answers_instances_in_process(workdir, scorer, capfd):
    from lm_eval.api.registry import get_model

    import lm.eval.harness  # noqa: F401  (registers "lm")

    # lm_eval's CLI always adds its own --batch_size (default 1) and --device.
    model = get_model("lm").create_from_arg_string(f"workdir={workdir},batch_size=4",
                                                   {"batch_size": 1, "device": "cuda:0"})
    assert (model.batch_size, model.scorer.step) == (4, STEPS)

    long_context = "Now is the winter of our discontent made glorious summer by this sun of York"
    pairs = [("To be, or not", " to be"), ("", " Romeo"), (long_context, " and"), ("O", " Romeo"),
             ("Alas, poor", " Yorick!")]  # more than one batch of 4
    answers = model.loglikelihood(instances("loglikelihood", pairs))
    assert "lm loglikelihood: 100%" in capfd.readouterr().err  # the progress bar
    expected = scorer.loglikelihood(pairs)
    np.testing.assert_allclose([a for a, _ in answers], [e for e, _ in expected], rtol=RTOL)
    assert [greedy for _, greedy in answers] == [greedy for _, greedy in expected]
    assert all(isinstance(a, float) and isinstance(g, bool) for a, g in answers)

    texts = ["If music be the food of love, play on; give me excess of it.",
             "Exit, pursued by a bear."]
    rolling = model.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]),
                                          disable_tqdm=True)
    assert "lm loglikelihood_rolling" not in capfd.readouterr().err
    np.testing.assert_allclose(rolling, scorer.loglikelihood_rolling(texts), rtol=RTOL)
    assert model.loglikelihood_rolling(texts, disable_tqdm=True) == rolling  # bare strings too

    requests = [("ROMEO:\n", {"until": ["\n"], "max_gen_toks": 6}),
                ("JULIET", {"until": [":"], "max_gen_toks": 8}),
                ("HAMLET:\nTo be", {"until": "\n", "max_gen_toks": 6, "do_sample": False})]
    generated = model.generate_until(instances("generate_until", requests))
    assert generated == scorer.generate_until(requests)
    assert all(isinstance(text, str) for text in generated)


def test_model_args_are_converted_and_checked(tmp_path):
    from lm.eval.harness import HarnessModel, harness_batch_size, model_arguments

    parsed = model_arguments({"workdir": "runs/a", "step": "latest", "batch_size": "8",
                              "seed": 3.0})
    assert parsed == {"workdir": "runs/a", "step": None, "batch_size": 8, "seed": 3}
    assert model_arguments({"workdir": "runs/a", "step": 1000})["step"] == 1000
    assert harness_batch_size({"batch_size": 1}) == 16  # lm_eval's default: not a choice
    assert harness_batch_size({"batch_size": "8"}) == 8
    assert harness_batch_size({"batch_size": "auto"}) == 16
    with pytest.raises(ValueError, match=r"unknown model_args \['pretrained', 'steps'\]"):
        HarnessModel.create_from_arg_string("workdir=runs/a,steps=3,pretrained=gpt2")
    with pytest.raises(ValueError, match="needs model_args workdir=RUN"):
        HarnessModel.create_from_arg_string("batch_size=4")
    with pytest.raises(ValueError, match="batch_size=0 is not an integer >= 1"):
        HarnessModel.create_from_arg_string("workdir=runs/a,batch_size=0")
    with pytest.raises(ValueError, match="step='last' is not an integer"):
        HarnessModel.create_from_arg_obj({"workdir": "runs/a", "step": "last"})
    with pytest.raises(ConfigError, match="is not a training workdir"):
        HarnessModel.create_from_arg_string(f"workdir={tmp_path / 'missing'}")


def fake_devices(platform: str, ids) -> list:
    import types

    return [types.SimpleNamespace(platform=platform, id=i) for i in ids]


def test_device_summary_names_what_jax_runs_on():
    from lm.eval.harness import device_summary, parameter_devices

    assert device_summary(fake_devices("cpu", [0])) == "cpu:0"
    assert device_summary(fake_devices("tpu", [3, 0, 1, 2])) == "tpu:0-3 (4 devices)"
    assert device_summary(fake_devices("gpu", [0, 2])) == "gpu:0,2 (2 devices)"
    params = {"w": jax.device_put(np.ones(2), jax.devices()[1]), "b": jax.device_put(1.0, jax.devices()[0])}
    assert parameter_devices(params) == jax.devices()[:2]


def test_device_argument_is_the_jax_device_for_this_model_only():
    from lm.eval.harness import model_from_argv, with_jax_device

    one_cpu = fake_devices("cpu", [0])
    argv = ["run", "--model", "lm", "--model_args", "workdir=runs/a", "--tasks", "x"]
    assert with_jax_device(argv, one_cpu) == argv + ["--device", "cpu:0"]
    given = ["run", "--device", "cuda:0", "--model=lm", "--device=cuda", "--tasks", "x"]
    assert with_jax_device(given, one_cpu) == ["run", "--model=lm", "--tasks", "x", "--device", "cpu:0"]
    assert [model_from_argv(a) for a in (argv, given, ["run", "-M", "lm"], ["run", "--model", "hf"],
                                         ["run", "--tasks", "x"])] == ["lm", "lm", "lm", "hf", "hf"]


def test_results_folder_is_named_after_the_workdir_and_checkpoint(tmp_path):
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    from lm.eval.harness import latest_checkpoint_step, results_folder_name, results_model_name

    workdir = tmp_path / "demo"
    assert latest_checkpoint_step(str(workdir)) is None
    for name in ("100", "2000", "3000.orbax-checkpoint-tmp-12"):  # the last is being written
        (workdir / "checkpoints" / name).mkdir(parents=True)
    assert latest_checkpoint_step(str(workdir)) == 2000
    assert results_folder_name("runs/demo/", 7) == "demo_step7"
    assert results_folder_name("runs/my run", None) == "my_run_latest"
    assert results_model_name(f"workdir={workdir},batch_size=4") == "demo_step2000"
    assert results_model_name({"workdir": str(workdir), "step": "100"}) == "demo_step100"
    assert results_model_name("pretrained=gpt2") is None
    # lm_eval names its results folder with these; other models keep lm_eval's own names.
    assert GeneralConfigTracker._get_model_name({"workdir": str(workdir), "step": 100}) == "demo_step100"
    assert GeneralConfigTracker._get_model_name("pretrained=org/model,dtype=float32") == "org/model"
    tracker = GeneralConfigTracker()
    tracker.log_experiment_args("lm", f"workdir={workdir}", None, None, False)
    assert tracker.model_name_sanitized == "demo_step2000"


def test_lm_eval_is_imported_only_by_the_adapter():
    """Importing lm.eval (and its scorer) must not pay for lm_eval's import."""
    code = "import sys, lm.eval, lm.eval.scoring; print('lm_eval' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
