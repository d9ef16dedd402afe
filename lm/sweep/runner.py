"""Runs every variant of a sweep, resumably, then writes the report.

    <workdir>/<variant>/          the variant's run (checkpoints, metrics.jsonl, ...)
    <workdir>/<variant>/result.json   status, overrides, metrics, wall_seconds (written last)
    <workdir>/results.{csv,md}, <plot>.png

Everything is checked before the first variant starts: override keys and types, runner names
and each runner's own validation of every variant's (and every evaluation's) config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Optional

import ml_collections

from lm.configlib import ConfigError
from lm.sweep import report
from lm.sweep.overrides import apply_overrides, current_value
from lm.sweep.registry import Runner, get_runner
from lm.sweep.spec import PLOT_KINDS, Eval, Sweep, Variant

RESULT_FILE = "result.json"


@dataclasses.dataclass
class PlannedVariant:
    variant: Variant
    config: ml_collections.ConfigDict
    runner: Runner
    evals: list[tuple[Eval, ml_collections.ConfigDict]]
    directory: str  # relative to the sweep's workdir

    @property
    def name(self) -> str:
        return self.variant.name


@dataclasses.dataclass
class SweepOutcome:
    rows: list[dict]
    failed: list[str]
    table: str


def directory_name(variant_name: str) -> str:
    """A file-system-safe directory name: 'mlp=swiglu,norm=rmsnorm' stays as it is."""
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", variant_name).strip("._") or "variant"


def _check_structure(sweep: Sweep) -> None:
    if not sweep.variants:
        raise ConfigError(f"sweep {sweep.name!r} has no variants")
    seen: dict[str, str] = {}
    for variant in sweep.variants:
        directory = directory_name(variant.name)
        if directory in seen:
            raise ConfigError(f"sweep {sweep.name!r}: variants {seen[directory]!r} and "
                              f"{variant.name!r} share the directory {directory!r}; rename one")
        seen[directory] = variant.name
    labels = [e.label for e in sweep.evals]
    for label in labels:
        if labels.count(label) > 1 or not re.fullmatch(r"[A-Za-z0-9_.=-]+", label):
            raise ConfigError(f"sweep {sweep.name!r}: eval label {label!r} must be unique and use "
                              f"only letters, digits and _.=-")
    for plot in sweep.plots:
        if plot.kind not in PLOT_KINDS:
            raise ConfigError(f"sweep {sweep.name!r}: plot of {plot.y!r} has kind={plot.kind!r}, "
                              f"not one of {', '.join(PLOT_KINDS)}")


def _configured(base, overrides: Mapping[str, Any], runner: Runner, where: str):
    """``base`` with ``overrides``, checked by the runner; errors start with ``where``."""
    try:
        config = apply_overrides(base, overrides)
        runner.validate(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return config


def plan(sweep: Sweep, base_overrides: Optional[Mapping[str, Any]] = None) -> list[PlannedVariant]:
    """Every variant's config, checked; raises ConfigError naming the variant and the key."""
    _check_structure(sweep)
    try:
        base = apply_overrides(sweep.base, base_overrides or {})
    except ConfigError as e:
        raise ConfigError(f"sweep {sweep.name!r}: --set: {e}") from None
    planned = []
    for variant in sweep.variants:
        runner = get_runner(variant.runner)
        where = f"sweep {sweep.name!r}, variant {variant.name!r}"
        config = _configured(base, variant.overrides, runner, where)
        evals = []
        if runner.evaluate is not None:
            evals = [(e, _configured(config, e.overrides, runner, f"{where}, eval {e.label!r}"))
                     for e in sweep.evals]
        planned.append(PlannedVariant(variant, config, runner, evals, directory_name(variant.name)))
    return planned


def config_digest(config: ml_collections.ConfigDict) -> str:
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_result(directory: str) -> Optional[dict]:
    path = os.path.join(directory, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_result(directory: str, record: dict) -> None:
    """Writes result.json atomically: a reader sees the old file or the whole new one."""
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, RESULT_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(directory, RESULT_FILE))


def _plain(value: Any) -> Any:
    """NumPy and JAX scalars as Python numbers, so they land in JSON as numbers."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value


def _train_and_evaluate(item: PlannedVariant, directory: str) -> dict:
    metrics = dict(item.runner.run(item.config, directory))
    for evaluation, config in item.evals:
        scores = item.runner.evaluate(config, directory)
        metrics.update({f"{evaluation.label}/{key}": value for key, value in scores.items()
                        if key != "step"})
    return {key: _plain(value) for key, value in metrics.items()}


def run_variant(item: PlannedVariant, directory: str) -> dict:
    """Runs one variant and returns its record; a crash is recorded, not raised."""
    record = {"name": item.name, "runner": item.variant.runner,
              "overrides": dict(item.variant.overrides), "config_digest": config_digest(item.config)}
    start = time.perf_counter()
    try:
        record.update(status="ok", metrics=_train_and_evaluate(item, directory))
    except Exception as e:  # noqa: BLE001 - one failed variant must not stop the sweep
        trace = traceback.format_exc()
        print(trace, file=sys.stderr, flush=True)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "error.txt"), "w") as f:
            f.write(trace)
        record.update(status="failed", metrics={}, error=f"{type(e).__name__}: {e}")
    record["wall_seconds"] = time.perf_counter() - start
    return record


def result_row(record: dict) -> dict:
    """One table row: name, runner, status, wall_seconds, error, each override, each metric."""
    row = {"name": record["name"], "runner": record.get("runner", ""),
           "status": record.get("status", "")}
    row.update(record.get("overrides", {}))
    row.update(record.get("metrics", {}))
    row["wall_seconds"] = record.get("wall_seconds")
    if record.get("error"):
        row["error"] = record["error"]
    return row


def _with_config_values(row: dict, config, keys, runner_keys: set) -> dict:
    """Fills the override columns a variant leaves at the base value with that value, where
    its runner reads them (some variant of the same runner overrides the key): an n-gram row
    shows no model width, a Transformer row no n-gram order."""
    for key in keys:
        if key not in row and (row.get("runner"), key) in runner_keys:
            row[key] = current_value(config, key)
    return row


def _summary(record: dict, columns) -> str:
    if record["status"] != "ok":
        return f"FAILED after {record['wall_seconds']:.0f} s: {record['error']}"
    shown = [f"{c}={report.format_cell(record['metrics'][c])}" for c in columns
             if c in record["metrics"]]
    return f"ok in {record['wall_seconds']:.0f} s" + (f": {', '.join(shown)}" if shown else "")


def _finished(item: PlannedVariant, directory: str, echo: Callable[[str], None],
              progress: str) -> Optional[dict]:
    """The saved record of a variant that already succeeded (None: run it)."""
    record = read_result(directory)
    if record is None or record.get("status") != "ok":
        return None
    echo(f"{progress} skip {item.name} (finished)")
    if record.get("config_digest") != config_digest(item.config):
        echo(f"    warning: {item.name} finished with a different config than the current one; "
             f"delete {os.path.join(directory, RESULT_FILE)} to rerun it")
    return record


def describe_plan(planned: list[PlannedVariant], workdir: str, base) -> str:
    """What --dry_run prints: the base config, then each variant's overrides and directory."""
    lines = ["base config:", str(base).rstrip(), ""]
    for index, item in enumerate(planned, 1):
        directory = os.path.join(workdir, item.directory) if workdir else item.directory
        state = " (finished)" if workdir and (read_result(directory) or {}).get("status") == "ok" else ""
        lines.append(f"[{index}/{len(planned)}] {item.name} (runner {item.variant.runner}) -> "
                     f"{directory}{state}")
        for key, value in item.variant.overrides.items():
            lines.append(f"    {key} = {value!r}")
        for evaluation, _ in item.evals:
            lines.append(f"    eval {evaluation.label}: {dict(evaluation.overrides)}")
    return "\n".join(lines)


def run_sweep(sweep: Sweep, workdir: str, base_overrides: Optional[Mapping[str, Any]] = None,
              command: str = "", dry_run: bool = False,
              echo: Callable[[str], None] = lambda line: print(line, flush=True)
              ) -> Optional[SweepOutcome]:
    """Checks the whole sweep, runs the unfinished variants, writes the report; dry_run only lists."""
    planned = plan(sweep, base_overrides)
    if dry_run:
        echo(describe_plan(planned, workdir, apply_overrides(sweep.base, base_overrides or {})))
        return None
    os.makedirs(workdir, exist_ok=True)
    records = []
    for index, item in enumerate(planned, 1):
        progress = f"[{index}/{len(planned)}]"
        directory = os.path.join(workdir, item.directory)
        record = _finished(item, directory, echo, progress)
        if record is None:
            echo(f"{progress} {item.name} ... (runner {item.variant.runner}, in {directory})")
            record = run_variant(item, directory)
            write_result(directory, record)
            echo(f"{progress} {item.name}: {_summary(record, sweep.columns)}")
        records.append(record)
    keys = report.override_keys(sweep)
    runner_keys = {(v.runner, key) for v in sweep.variants for key in v.overrides}
    rows = [_with_config_values({**result_row(record), "directory": item.directory}, item.config, keys,
                                runner_keys)
            for record, item in zip(records, planned)]
    table = report.write_report(sweep, workdir, rows, command)
    echo(table)
    return SweepOutcome(rows, [r["name"] for r in records if r["status"] != "ok"], table)
