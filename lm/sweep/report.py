"""The sweep's report: results.csv (every value exact), results.md (table, machine, plots), PNGs."""
from __future__ import annotations

import csv
import datetime
import io
import math
import os
import platform
from typing import Any, Sequence

from lm.fileio import save_figure, write_atomically
from lm.sweep.spec import Plot, Sweep


def override_keys(sweep: Sweep) -> list[str]:
    """Every key some variant overrides, in order of first appearance."""
    keys: list[str] = []
    for variant in sweep.variants:
        keys.extend(key for key in variant.overrides if key not in keys)
    return keys


def eval_columns(sweep: Sweep) -> list[str]:
    """'<label>/<column>' for each evaluation and each eval/ column (eval/loss if none)."""
    metrics = [c for c in sweep.columns if c.startswith("eval/")] or ["eval/loss"]
    return [f"{e.label}/{metric}" for e in sweep.evals for metric in metrics]


def table_columns(sweep: Sweep, rows: list[dict]) -> list[str]:
    columns = ["name", *override_keys(sweep), *sweep.columns, *eval_columns(sweep)]
    if any(row.get("status") != "ok" for row in rows):
        columns.append("status")
    return list(dict.fromkeys(columns))


def csv_columns(sweep: Sweep, rows: list[dict]) -> list[str]:
    """The table's columns, every metric of every evaluation, then runner and status."""
    prefixes = tuple(f"{e.label}/" for e in sweep.evals)
    evaluated = sorted({key for row in rows for key in row if prefixes and key.startswith(prefixes)},
                       key=lambda key: (prefixes.index(key.split("/", 1)[0] + "/"), key))
    columns = ["name", *override_keys(sweep), *sweep.columns, *eval_columns(sweep), *evaluated,
               "runner", "status", "error"]
    return list(dict.fromkeys(columns))


def format_cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.2f}"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.4f}"


def markdown_table(columns: Sequence[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format_cell(row.get(c)).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str, columns: Sequence[str], rows: list[dict]) -> None:
    text = io.StringIO(newline="")  # the csv module writes its own line endings
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    write_atomically(path, text.getvalue())


def machine_description() -> str:
    import jax
    devices = jax.devices()
    return (f"{platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"JAX {jax.__version__} on {len(devices)} {devices[0].platform} device(s) "
            f"({devices[0].device_kind})")


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plot_points(plot: Plot, rows: list[dict]) -> list[dict]:
    return [row for row in rows if row.get("status") == "ok" and _numeric(row.get(plot.y))
            and row.get(plot.x) is not None]


def _bar(ax, plot: Plot, rows: list[dict]) -> None:
    labels = [str(row[plot.x]) for row in rows]
    values = [row[plot.y] for row in rows]
    groups = [row.get(plot.group) for row in rows] if plot.group else [None] * len(rows)
    palette = {g: f"C{i}" for i, g in enumerate(dict.fromkeys(groups))}
    bars = ax.bar(range(len(values)), values, color=[palette[g] for g in groups])
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right")
    ax.bar_label(bars, labels=[format_cell(v) for v in values], fontsize=8, padding=2)
    if plot.group:
        for group, color in palette.items():
            ax.bar(0, 0, color=color, label=f"{plot.group}={group}")
        ax.legend(fontsize=8)
    if not plot.logy and min(values) > 0:
        low, high = min(values), max(values)
        spread = (high - low) or abs(high) * 0.05 or 1.0
        if low - spread > 0:  # zoom in on the differences rather than on the common offset
            ax.set_ylim(low - spread, high + spread * 0.4)
    ax.set_xlabel(plot.x)


def _line(ax, plot: Plot, rows: list[dict]) -> None:
    series: dict[Any, list[tuple]] = {}
    for row in rows:
        series.setdefault(row.get(plot.group) if plot.group else None, []).append(
            (row[plot.x], row[plot.y]))
    for group, points in series.items():
        points.sort(key=lambda p: p[0] if _numeric(p[0]) else str(p[0]))
        xs, ys = zip(*points)
        label = f"{plot.group}={group}" if plot.group else None
        ax.plot([x if _numeric(x) else str(x) for x in xs], ys, marker="o", label=label)
    if plot.group:
        ax.legend(fontsize=8)
    if plot.logx:
        ax.set_xscale("log")
    ax.set_xlabel(plot.x)


def draw_plot(plot: Plot, rows: list[dict], path: str) -> bool:
    """Writes the PNG; False when no finished variant has both values."""
    points = _plot_points(plot, rows)
    if not points:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    (_bar if plot.kind == "bar" else _line)(ax, plot, points)
    if plot.logy:
        ax.set_yscale("log")
    ax.set_ylabel(plot.y)
    ax.set_title(plot.heading)
    ax.grid(alpha=0.3, axis="y" if plot.kind == "bar" else "both")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _failures(rows: list[dict]) -> str:
    failed = [row for row in rows if row.get("status") != "ok"]
    if not failed:
        return ""
    lines = ["Failed variants (see `<variant>/error.txt`):", ""]
    lines += [f"- `{row['name']}`: {row.get('error', '')}" for row in failed]
    return "\n".join(lines)


def markdown_report(sweep: Sweep, rows: list[dict], command: str, table: str,
                    images: list[tuple[str, str]], extra: str) -> str:
    total = sum(row.get("wall_seconds") or 0.0 for row in rows)
    parts = [f"# Sweep: {sweep.name}", sweep.description.strip(),
             f"Command: `{command}`" if command else "",
             f"Machine: {machine_description()}; report written "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}. Wall time of the variants "
             f"(last run of each): {total:,.0f} s.",
             table, _failures(rows),
             "\n\n".join(f"![{title}]({filename})" for title, filename in images), extra.strip()]
    return "\n\n".join(part for part in parts if part) + "\n"


def write_report(sweep: Sweep, workdir: str, rows: list[dict], command: str = "") -> str:
    """Writes results.csv, the plots and results.md into ``workdir``; returns the Markdown table."""
    write_csv(os.path.join(workdir, "results.csv"), csv_columns(sweep, rows), rows)
    table = markdown_table(table_columns(sweep, rows), rows)
    images = [(plot.heading, plot.filename) for plot in sweep.plots
              if draw_plot(plot, rows, os.path.join(workdir, plot.filename))]
    extra = sweep.analysis(rows, workdir) if sweep.analysis else ""
    text = markdown_report(sweep, rows, command, table, images, extra or "")
    write_atomically(os.path.join(workdir, "results.md"), text)
    return table
