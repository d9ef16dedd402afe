"""report.json (everything) and report.md (the summary a reader checks first)."""
from __future__ import annotations

import dataclasses
import json
import pathlib

from lm.data.clean.shards import write_atomically

MD_MIN_SIMILARITY = 0.05  # report.md lists pairs at or above this; report.json lists all


def build_report(cleaner, writer, config, runtime_s: float, num_inputs: int) -> dict:
    return {
        "runtime_s": round(runtime_s, 2),
        "inputs": num_inputs,
        "shards": list(writer.written),
        "config": dataclasses.asdict(config),
        "stages": {name: dataclasses.asdict(stats) for name, stats in cleaner.all_stats().items()},
        "duplicate_clusters": [{"kept": kept, "copies": copies}
                               for kept, copies in cleaner.exact.clusters.items()],
        "near_duplicate_pairs": [dataclasses.asdict(p) for p in cleaner.near.pairs],
        "skipped": cleaner.skipped,
        "quality_signals": cleaner.quality_signals,
    }


def write_report(report: dict, output_dir: pathlib.Path) -> None:
    write_atomically(output_dir / "report.json", json.dumps(report, indent=1) + "\n")
    write_atomically(output_dir / "report.md", render_markdown(report))


def render_markdown(report: dict) -> str:
    lines = ["# Cleaning report\n", f"{report['inputs']} input files, "
             f"{len(report['shards'])} shards, {report['runtime_s']} s.\n"]
    lines += _stage_table(report["stages"])
    lines += _quality_section(report["quality_signals"])
    lines += ["\n## Exact duplicate clusters\n"]
    lines += [f"- `{c['kept']}` kept; copies: " + ", ".join(f"`{n}`" for n in c["copies"])
              for c in report["duplicate_clusters"]] or ["none"]
    lines += _pairs_section(report)
    lines += ["\n## Skipped inputs\n"]
    lines += [f"- `{s['name']}`: {s['reason']}" for s in report["skipped"]] or ["none"]
    lines += ["\n## Examples of removed text\n"]
    for name, stats in report["stages"].items():
        for example in stats["examples"]:
            lines.append(f"- {name}: `{_one_line(example)}`")
    return "\n".join(lines) + "\n"


def _stage_table(stages: dict) -> list[str]:
    rows = ["| stage | docs in | docs out | bytes in | bytes out | counts |",
            "|---|---:|---:|---:|---:|---|"]
    for name, s in stages.items():
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(s["counts"].items()))
        rows.append(f"| {name} | {s['documents_in']} | {s['documents_out']} | "
                    f"{s['bytes_in']:,} | {s['bytes_out']:,} | {counts} |")
    return rows


def _quality_section(signals_by_document: dict) -> list[str]:
    """Min / median / max of each quality signal over the documents that reached the filter."""
    if not signals_by_document:
        return []
    lines = ["\n## Quality signals over documents\n", "| signal | min | median | max |",
             "|---|---:|---:|---:|"]
    for key in next(iter(signals_by_document.values())):
        values = sorted(s[key] for s in signals_by_document.values())
        lo, mid, hi = values[0], values[len(values) // 2], values[-1]
        lines.append(f"| {key} | {lo:.3g} | {mid:.3g} | {hi:.3g} |")
    return lines


def _pairs_section(report: dict) -> list[str]:
    threshold = report["config"]["dedup"]["near_dup_threshold"]
    pairs = sorted(report["near_duplicate_pairs"], key=lambda p: -p["similarity"])
    shown = [p for p in pairs if p["similarity"] >= MD_MIN_SIMILARITY]
    lines = [f"\n## Near-duplicate candidate pairs (threshold {threshold})\n",
             f"{len(pairs)} LSH candidate pairs; {len(shown)} with estimated Jaccard >= "
             f"{MD_MIN_SIMILARITY} listed (all in report.json).\n",
             "| kept | other | estimated Jaccard | other removed |", "|---|---|---:|---|"]
    lines += [f"| {p['kept']} | {p['other']} | {p['similarity']:.3f} | "
              f"{'yes' if p['removed'] else 'no'} |" for p in shown]
    return lines


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    return flat[:limit] + ("..." if len(flat) > limit else "")
