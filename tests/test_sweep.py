"""Ablation sweeps: variants from a grid, checks before any run, resumable runs, the report."""
import csv
import functools
import json
import os
import textwrap

import jax
import pytest

from lm.configlib import ConfigError
from lm.sweep import Eval, Plot, Sweep, Variant, grid, plan, registry, run_sweep
from lm.sweep.overrides import parse_assignments
from lm.sweep.runner import variant_config
from tests.helpers import run_module, small_config


def tiny_base(steps: int = 3):
    config = small_config(steps=steps)
    config.model.max_len = 32
    return config


def train_on_one_device(monkeypatch):
    """The 'pretrain' runner on the first test device (the tiny config's mesh has one)."""
    from lm.train import loop
    one = jax.devices()[:1]
    monkeypatch.setitem(registry.RUNNERS, "pretrain", registry.Runner(
        functools.partial(loop.run_pretrain, devices=one), loop.validate_pretrain,
        functools.partial(loop.evaluate_checkpoint, devices=one)))


def tiny_sweep(variants, **fields) -> Sweep:
    return Sweep(name="tiny", description="A tiny sweep for tests.", base=tiny_base(),
                 variants=variants, **fields)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def fake_runner(monkeypatch, fail_when_mlp: str = "relu"):
    """A runner that trains nothing: metrics from the config; raises for one MLP choice."""
    calls = []

    def run(config, workdir):
        calls.append(config.model.mlp)
        if config.model.mlp == fail_when_mlp:
            raise RuntimeError(f"{config.model.mlp} diverged")
        return {"eval/bits_per_token": config.train.steps / 10, "num_params": 123}

    monkeypatch.setitem(registry.RUNNERS, "fake", registry.Runner(run, lambda config: None))
    return calls


def test_grid_is_the_named_cartesian_product():
    variants = grid({"model.mlp": ["gelu", "swiglu"], "model.norm": ["layernorm", "rmsnorm"],
                     "optimizer.lr": [1e-3]}, runner="ngram")
    assert [v.name for v in variants] == [
        "mlp=gelu,norm=layernorm,lr=0.001", "mlp=gelu,norm=rmsnorm,lr=0.001",
        "mlp=swiglu,norm=layernorm,lr=0.001", "mlp=swiglu,norm=rmsnorm,lr=0.001"]
    assert variants[1].overrides == {"model.mlp": "gelu", "model.norm": "rmsnorm", "optimizer.lr": 1e-3}
    assert {v.runner for v in variants} == {"ngram"}
    # Keys whose last parts collide keep their full names.
    assert [v.name for v in grid({"a.x": [1], "b.x": [2]})] == ["a.x=1,b.x=2"]


def test_set_values_take_the_type_of_the_field():
    overrides = parse_assignments(["train.steps=5", "model.use_bias=true", "optimizer.lr=1e-2",
                                   "model.mlp=swiglu", "config.data.seq_len=8"], tiny_base())
    assert overrides == {"train.steps": 5, "model.use_bias": True, "optimizer.lr": 0.01,
                         "model.mlp": "swiglu", "data.seq_len": 8}
    assert isinstance(overrides["optimizer.lr"], float)
    with pytest.raises(ConfigError, match="cannot read 'many' as a int"):
        parse_assignments(["train.steps=many"], tiny_base())


def test_set_reaches_every_variant_over_its_own_values(monkeypatch):
    fake_runner(monkeypatch)
    sweep = tiny_sweep([Variant("short", {"train.steps": 50, "model.mlp": "gelu"}, "fake"),
                        Variant("long", {"train.steps": 65237}, "fake")])
    planned = plan(sweep, parse_assignments(["train.steps=3"], sweep.base))
    assert [item.config.train.steps for item in planned] == [3, 3]
    assert planned[0].config.model.mlp == "gelu"  # the variant's other values stay
    assert planned[0].overrides == {"train.steps": 3, "model.mlp": "gelu"}  # what the table shows
    assert variant_config(sweep, sweep.variants[1], {"train.steps": 3},
                          registry.get_runner("fake")).train.steps == 3
    with pytest.raises(ConfigError, match="--set.*'stpes'.*'config.train.steps'"):
        plan(sweep, {"train.stpes": 3})
    with pytest.raises(ConfigError, match="--set.*train.steps='many' is a str"):
        plan(sweep, {"train.steps": "many"})


def test_set_goes_under_each_evaluations_own_overrides():
    """An evaluation's overrides (a longer context, say) still apply on top of --set."""
    sweep = tiny_sweep([Variant("a", {"train.steps": 50}), Variant("b", {"train.steps": 70})],
                       evals=[Eval("len32", {"data.seq_len": 32, "train.steps": 9})])
    planned = plan(sweep, {"train.steps": 3, "data.seq_len": 8})
    assert [item.config.train.steps for item in planned] == [3, 3]
    assert [item.config.data.seq_len for item in planned] == [8, 8]
    evals = [config for item in planned for _, config in item.evals]
    assert [(c.data.seq_len, c.train.steps) for c in evals] == [(32, 9), (32, 9)]


def test_results_and_dry_run_show_the_values_set_for_every_variant(tmp_path, monkeypatch):
    fake_runner(monkeypatch)
    sweep = tiny_sweep([Variant("steps=50", {"train.steps": 50}, "fake"),
                        Variant("steps=70", {"train.steps": 70}, "fake")])
    lines = []
    run_sweep(sweep, str(tmp_path / "out"), {"train.steps": 3}, dry_run=True, echo=lines.append)
    assert "    train.steps = 3 (--set; the variant's own: 70)" in lines[0]
    run_sweep(sweep, str(tmp_path / "out"), {"train.steps": 3}, echo=lambda line: None)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [(row["train.steps"], row["eval/bits_per_token"]) for row in rows] == [("3", "0.3")] * 2
    assert read_json(tmp_path / "out" / "steps=70" / "result.json")["overrides"] == {"train.steps": 3}


def test_unknown_override_key_fails_before_anything_is_written(tmp_path):
    workdir = tmp_path / "sweep"
    sweep = tiny_sweep([Variant("ok", {}), Variant("typo", {"model.mpl": "swiglu"})])
    with pytest.raises(ConfigError) as error:
        run_sweep(sweep, str(workdir))
    message = str(error.value)
    assert "'typo'" in message and "'mpl'" in message and "'config.model.mlp'" in message
    assert not workdir.exists()
    with pytest.raises(ConfigError, match="eval 'long'.*'seq_lne'.*'config.data.seq_len'"):
        run_sweep(tiny_sweep([Variant("ok", {})], evals=[Eval("long", {"data.seq_lne": 32})]),
                  str(workdir))
    assert not workdir.exists()


def test_bad_values_fail_validation_before_training(tmp_path, monkeypatch):
    calls = fake_runner(monkeypatch)
    workdir = tmp_path / "sweep"
    swishy = tiny_sweep([Variant("first", {}, "fake"), Variant("bad", {"model.mlp": "swishy"})])
    with pytest.raises(ConfigError, match="variant 'bad'.*model.mlp='swishy' is not one of"):
        run_sweep(swishy, str(workdir))
    wrong_type = tiny_sweep([Variant("first", {}, "fake"), Variant("typed", {"train.steps": "many"})])
    with pytest.raises(ConfigError, match="variant 'typed'.*train.steps='many' is a str"):
        run_sweep(wrong_type, str(workdir))
    no_runner = tiny_sweep([Variant("first", {}, "fake"), Variant("r", {}, runner="trian")])
    with pytest.raises(ConfigError, match="unknown runner 'trian'. Did you mean 'pretrain'"):
        run_sweep(no_runner, str(workdir))
    assert calls == [] and not workdir.exists()


def test_sweep_trains_evaluates_reports_and_skips_finished(tmp_path, monkeypatch):
    train_on_one_device(monkeypatch)
    fake_runner(monkeypatch)
    workdir = str(tmp_path / "sweep")
    # One variant trains for real; the other uses a runner without evaluations (like a baseline).
    sweep = tiny_sweep([Variant("mlp=swiglu", {"model.mlp": "swiglu"}),
                        Variant("mlp=gelu", {"model.mlp": "gelu"}, runner="fake")],
                       evals=[Eval("len32", {"data.seq_len": 32})],
                       plots=[Plot(x="name", y="eval/bits_per_token", name="bits")])
    lines = []
    outcome = run_sweep(sweep, workdir, {"train.steps": 2}, command="python -m launch.sweep x",
                        echo=lines.append)
    assert outcome.failed == []
    assert "[1/2] mlp=swiglu ..." in "\n".join(lines) and "[2/2] mlp=gelu ..." in "\n".join(lines)
    results = {name: read_json(os.path.join(workdir, name, "result.json"))
               for name in ("mlp=swiglu", "mlp=gelu")}
    trained = results["mlp=swiglu"]["metrics"]
    assert results["mlp=swiglu"]["runner"] == "pretrain" and results["mlp=gelu"]["runner"] == "fake"
    assert trained["step"] == 2  # the --set override of train.steps=3
    assert results["mlp=gelu"]["metrics"]["eval/bits_per_token"] == 0.2
    assert trained["len32/eval/loss"] > 0 and "len32/step" not in trained
    assert trained["len32/eval/loss"] != trained["eval/loss"]
    rows = read_csv(os.path.join(workdir, "results.csv"))
    assert [row["name"] for row in rows] == ["mlp=swiglu", "mlp=gelu"]
    for row in rows:
        result = results[row["name"]]
        assert row["status"] == "ok" and row["model.mlp"] == row["name"].split("=")[1]
        assert "directory" not in row
        assert float(row["wall_seconds"]) == result["wall_seconds"]
        metric_columns = [c for c in row if c in result["metrics"]]
        assert len(metric_columns) == (6 if row["name"] == "mlp=swiglu" else 2)
        for column in metric_columns:
            assert float(row[column]) == result["metrics"][column], column
    assert all(rows[0][c] for c in ("train/tokens_per_sec", "len32/eval/bits_per_token",
                                    "len32/eval/perplexity"))
    report = open(os.path.join(workdir, "results.md")).read()
    assert "# Sweep: tiny" in report and "`python -m launch.sweep x`" in report
    assert "CPU cores" in report and "| name | model.mlp | eval/bits_per_token |" in report
    assert "len32/eval/bits_per_token" in report and "![eval/bits_per_token by name](bits.png)" in report
    assert os.path.getsize(os.path.join(workdir, "bits.png")) > 1000

    mtimes = {name: os.path.getmtime(os.path.join(workdir, name, "result.json")) for name in results}
    again = []
    run_sweep(sweep, workdir, {"train.steps": 2}, echo=again.append)
    assert "[1/2] skip mlp=swiglu (finished)" in again and "[2/2] skip mlp=gelu (finished)" in again
    assert mtimes == {name: os.path.getmtime(os.path.join(workdir, name, "result.json"))
                      for name in results}
    assert read_csv(os.path.join(workdir, "results.csv")) == rows


def test_failing_variant_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    calls = fake_runner(monkeypatch)
    workdir = str(tmp_path / "sweep")
    sweep = tiny_sweep(grid({"model.mlp": ["gelu", "relu", "swiglu"]}, runner="fake"),
                       analysis=lambda rows, _: f"Analysed {sum(r['status'] == 'ok' for r in rows)} runs.")
    outcome = run_sweep(sweep, workdir, echo=lambda line: None)
    assert calls == ["gelu", "relu", "swiglu"] and outcome.failed == ["mlp=relu"]
    failed = read_json(os.path.join(workdir, "mlp=relu", "result.json"))
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: relu diverged"
    assert "relu diverged" in open(os.path.join(workdir, "mlp=relu", "error.txt")).read()
    rows = {row["name"]: row for row in read_csv(os.path.join(workdir, "results.csv"))}
    assert rows["mlp=swiglu"]["status"] == "ok" and rows["mlp=relu"]["status"] == "failed"
    report = open(os.path.join(workdir, "results.md")).read()
    assert "RuntimeError: relu diverged" in report and report.endswith("Analysed 2 runs.\n")
    # A second invocation reruns only the failed variant.
    calls.clear()
    run_sweep(sweep, workdir, echo=lambda line: None)
    assert calls == ["relu"]


def test_runners_named_by_import_path_load_only_when_used(monkeypatch):
    monkeypatch.setitem(registry.RUNNERS, "lazy", registry.Runner("json:dumps", "json:loads"))
    monkeypatch.setitem(registry.RUNNERS, "missing",
                        registry.Runner("lm.no_such_module:run", "lm.no_such_module:validate"))
    lazy = registry.get_runner("lazy")
    assert lazy.run is json.dumps and lazy.validate is json.loads and lazy.evaluate is None
    with pytest.raises(ConfigError, match="runner 'missing' needs lm.no_such_module:run"):
        registry.get_runner("missing")


SWEEP_FILE = """
from lm.sweep import Plot, Sweep, Variant, register_runner
from tests.helpers import small_config


def run(config, workdir):
    if config.model.mlp == "relu":
        raise RuntimeError("relu diverged")
    return {"eval/bits_per_token": config.train.steps / 10}


register_runner("fake", run, lambda config: None)


def get_sweep(variant=""):
    base = small_config(steps=3)
    names = ["gelu", "relu"] if variant == "failing" else ["gelu", "swiglu"]
    return Sweep("cli", "From the command line.", base,
                 [Variant(f"mlp={m}", {"model.mlp": m}, "fake") for m in names],
                 columns=["eval/bits_per_token"], plots=[Plot(x="name", y="eval/bits_per_token")])
"""


def test_dry_run_lists_variants_and_writes_nothing(tmp_path, monkeypatch):
    fake_runner(monkeypatch)
    lines = []
    sweep = tiny_sweep(grid({"model.mlp": ["gelu", "swiglu"]}, runner="fake"))
    assert run_sweep(sweep, str(tmp_path / "out"), {"train.steps": 7}, dry_run=True,
                     echo=lines.append) is None
    listing = "\n".join(lines)
    assert "steps: 7" in listing and "[2/2] mlp=swiglu (runner fake)" in listing
    assert "model.mlp = 'swiglu'" in listing and not (tmp_path / "out").exists()


def test_command_line_fails_clearly_and_reports_failed_variants(tmp_path):
    sweep_file = tmp_path / "cli_sweep.py"
    sweep_file.write_text(textwrap.dedent(SWEEP_FILE))
    workdir = str(tmp_path / "out")
    config = f"--config={sweep_file}"

    typo = run_module("launch.sweep", config, f"--workdir={workdir}", "--set=train.stpes=7")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert len(typo.stderr.strip().splitlines()) == 1
    assert "'stpes'" in typo.stderr and "'config.train.steps'" in typo.stderr
    assert not os.path.exists(workdir)

    done = run_module("launch.sweep", f"{config}:failing", f"--workdir={workdir}",
                      "--set=train.steps=7")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "1 of 2 variants failed: mlp=relu" in done.stderr
    assert "| mlp=gelu | gelu | 0.7000 | ok |" in done.stdout
    assert [row["status"] for row in read_csv(os.path.join(workdir, "results.csv"))] == ["ok", "failed"]
    assert "--set=train.steps=7" in open(os.path.join(workdir, "results.md")).read()
    assert os.path.exists(os.path.join(workdir, "eval_bits_per_token_by_name.png"))
