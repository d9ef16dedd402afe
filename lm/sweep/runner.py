"""Runs every variant of a sweep, resumably, then writes the report.

    <workdir>/<variant>/          the variant's run (checkpoints, metrics.jsonl, ...)
    <workdir>/<variant>/result.json   status, overrides, metrics, wall_seconds (written last)
    <workdir>/results.{csv,md}, <plot>.png

A variant's config is the base config, then the variant's own overrides, then the overrides
given for every variant (``launch.sweep --set``), which therefore win over the variant's own;
an evaluation's overrides go on top of its variant's config.

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
from lm.fileio import write_atomically
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

    @property
    def overrides(self) -> dict[str, Any]:
        """The variant's override keys with the values it runs with: an override given for every
        variant (--set) replaces the variant's own, and the results table must show that."""
        return {key: _plain_value(current_value(self.config, key)) for key in self.variant.overrides}


def _plain_value(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


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


def _overridden(config, overrides: Mapping[str, Any], where: str):
    """``config`` with ``overrides``; errors (unknown key, wrong type) start with ``where``."""
    try:
        return apply_overrides(config, overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _configured(base, overrides: Mapping[str, Any], runner: Runner, where: str):
    """``base`` with ``overrides``, checked by the runner; errors start with ``where``."""
    config = _overridden(base, overrides, where)
    try:
        runner.validate(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return config


def base_with(sweep: Sweep, common_overrides: Optional[Mapping[str, Any]]) -> ml_collections.ConfigDict:
    """The base config with the overrides for every variant: checks their keys and types once,
    against the base, so that a typo in --set is named as such."""
    return _overridden(sweep.base, common_overrides or {}, f"sweep {sweep.name!r}: --set")


def variant_config(sweep: Sweep, variant: Variant, common_overrides: Optional[Mapping[str, Any]],
                   runner: Runner) -> ml_collections.ConfigDict:
    """The config a variant runs with: the base, the variant's own overrides, then
    ``common_overrides`` (--set), which win; checked by the variant's runner."""
    where = _where(sweep, variant)
    own = _overridden(sweep.base, variant.overrides, where)
    return _configured(own, common_overrides or {}, runner, where)


def _where(sweep: Sweep, variant: Variant) -> str:
    return f"sweep {sweep.name!r}, variant {variant.name!r}"


def plan(sweep: Sweep, common_overrides: Optional[Mapping[str, Any]] = None,
         workdir: str = "") -> list[PlannedVariant]:
    """Every variant's config, checked; raises ConfigError naming the variant and the key.
    ``common_overrides`` (launch.sweep's --set) apply to every variant after its own overrides.
    '{sweep}' in a variant's string override stands for ``workdir``, the sweep's directory (a
    variant that starts from another variant's run names it as '{sweep}/<variant>')."""
    _check_structure(sweep)
    base_with(sweep, common_overrides)
    planned = []
    for variant in sweep.variants:
        variant = dataclasses.replace(variant, overrides={
            key: value.replace("{sweep}", workdir or ".") if isinstance(value, str) else value
            for key, value in variant.overrides.items()})
        runner = get_runner(variant.runner)
        where = _where(sweep, variant)
        config = variant_config(sweep, variant, common_overrides, runner)
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
    write_atomically(os.path.join(directory, RESULT_FILE),
                     json.dumps(record, indent=2, sort_keys=True, default=str))


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
              "overrides": item.overrides, "config_digest": config_digest(item.config)}
    start = time.perf_counter()
    try:
        record.update(status="ok", metrics=_train_and_evaluate(item, directory))
    except Exception as e:  # noqa: BLE001 - one failed variant must not stop the sweep
        trace = traceback.format_exc()
        print(trace, file=sys.stderr, flush=True)
        write_atomically(os.path.join(directory, "error.txt"), trace)
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
    """What --dry_run prints: the base config (with --set), then each variant's overrides, as it
    runs with them, and directory."""
    lines = ["base config:", str(base).rstrip(), ""]
    for index, item in enumerate(planned, 1):
        directory = os.path.join(workdir, item.directory) if workdir else item.directory
        state = " (finished)" if workdir and (read_result(directory) or {}).get("status") == "ok" else ""
        lines.append(f"[{index}/{len(planned)}] {item.name} (runner {item.variant.runner}) -> "
                     f"{directory}{state}")
        for key, value in item.overrides.items():
            own = item.variant.overrides[key]
            replaced = f" (--set; the variant's own: {own!r})" if _plain_value(own) != value else ""
            lines.append(f"    {key} = {value!r}{replaced}")
        for evaluation, _ in item.evals:
            lines.append(f"    eval {evaluation.label}: {dict(evaluation.overrides)}")
    return "\n".join(lines)


def run_sweep(sweep: Sweep, workdir: str, common_overrides: Optional[Mapping[str, Any]] = None,
              command: str = "", dry_run: bool = False,
              echo: Callable[[str], None] = lambda line: print(line, flush=True)
              ) -> Optional[SweepOutcome]:
    """Checks the whole sweep, runs the unfinished variants, writes the report; dry_run only lists.
    ``common_overrides`` (--set) apply to every variant, after the variant's own overrides."""
    planned = plan(sweep, common_overrides, workdir)
    if dry_run:
        echo(describe_plan(planned, workdir, base_with(sweep, common_overrides)))
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
