"""python -m lm.data.clean --input=<dir|glob> --output=<dir> [--near_dup_threshold=0.8]
[--workers=2]

Mistakes (no input files, an --output that cannot be written, a disk that fills up) exit with
code 2 and one line on stderr; the shards written before a failure are kept."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from lm import fileio
from lm.data.clean.config import CleanConfig
from lm.data.clean.pipeline import clean_files
from lm.data.clean.reading import list_inputs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lm.data.clean",
                                     description="Clean .txt files into JSONL shards.")
    parser.add_argument("--input", required=True, help="folder (read recursively) or glob")
    parser.add_argument("--output", required=True, help="folder for shards and reports")
    parser.add_argument("--near_dup_threshold", type=float, default=0.8)
    parser.add_argument("--workers", type=int, default=0, help="0: all cores")
    parser.add_argument("--documents_per_shard", type=int, default=1000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = list_inputs(args.input)
    if not paths:
        print(f"error: no .txt files match --input={args.input!r}; give a folder or a glob.",
              file=sys.stderr)
        return 2
    unwritable = fileio.unwritable_reason(args.output)
    if unwritable is not None:
        print(f"error: cannot write --output={args.output}: {unwritable}; point --output at a "
              "folder you can write to", file=sys.stderr)
        return 2
    base = CleanConfig()
    config = dataclasses.replace(
        base, workers=args.workers, documents_per_shard=args.documents_per_shard,
        dedup=dataclasses.replace(base.dedup, near_dup_threshold=args.near_dup_threshold))
    try:
        report = clean_files(paths, args.output, config)
    except OSError as e:
        failure = fileio.write_failure(e, "--output")
        if failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        return 2
    print(f"{report['inputs']} inputs -> {args.output}: {len(report['shards'])} shards, "
          f"{len(report['skipped'])} skipped, {report['runtime_s']} s "
          f"(details in report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
