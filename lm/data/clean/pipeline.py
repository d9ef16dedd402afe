"""The whole cleaning run: per-document stages in a process pool, then the corpus-level
de-duplication in input order, then JSONL shards and the report."""
from __future__ import annotations

import multiprocessing
import os
import pathlib
import time

import tqdm

from lm.data.clean.config import CleanConfig
from lm.data.clean.document import PER_DOCUMENT_STAGES, DocumentResult, process_file
from lm.data.clean.exact_dedup import DocumentDeduplicator, ParagraphDeduplicator
from lm.data.clean.near_dedup import NearDeduplicator
from lm.data.clean.report import build_report, write_report
from lm.data.clean.shards import ShardWriter
from lm.data.clean.stats import StageStats


class CorpusCleaner:
    """Consumes per-document results in input order; owns the corpus-level stages."""

    def __init__(self, config: CleanConfig, writer: ShardWriter):
        self.config = config
        self.writer = writer
        self.stage_stats = {stage: StageStats() for stage in PER_DOCUMENT_STAGES}
        self.exact = DocumentDeduplicator()
        self.near = NearDeduplicator(config.dedup.near_dup_threshold,
                                     config.dedup.lsh_rows_per_band)
        self.paragraphs = ParagraphDeduplicator(config.dedup.paragraph_min_chars)
        self.skipped: list[dict[str, str]] = []
        self.quality_signals: dict[str, dict[str, float]] = {}

    def consume(self, result: DocumentResult) -> None:
        for stage, stats in result.stats.items():
            self.stage_stats[stage].merge(stats)
        if result.quality_signals is not None:
            self.quality_signals[result.name] = result.quality_signals
        if result.skip_reason is not None:
            self.skipped.append({"name": result.name, "reason": result.skip_reason})
            return
        text = result.text
        if text is None or not self.exact.keep(result.name, text):
            return
        if not self.near.keep(result.name, text, result.signature):
            return
        text = self.paragraphs.dedup(text)
        if text is not None:
            self.writer.add(result.name, text)

    def all_stats(self) -> dict[str, StageStats]:
        return {**self.stage_stats, "exact_dedup_documents": self.exact.stats,
                "near_dedup": self.near.stats, "exact_dedup_paragraphs": self.paragraphs.stats}


def document_names(paths: list[pathlib.Path]) -> list[str]:
    """Paths relative to their common folder ('milton/metadata.txt'), so names are unique."""
    if not paths:
        return []
    root = pathlib.Path(os.path.commonpath([p.parent for p in paths]))
    return [str(p.relative_to(root)) for p in paths]


def clean_files(paths: list[pathlib.Path], output_dir: str | pathlib.Path,
                config: CleanConfig = CleanConfig(), progress: bool = True) -> dict:
    """Cleans ``paths`` into shards under ``output_dir``; returns the report (also written)."""
    start = time.time()
    output_dir = pathlib.Path(output_dir)
    writer = ShardWriter(output_dir, config.documents_per_shard)
    cleaner = CorpusCleaner(config, writer)
    tasks = [(p, name, config) for p, name in zip(paths, document_names(paths))]
    workers = config.workers or os.cpu_count() or 1
    try:
        for result in tqdm.tqdm(_map_in_order(tasks, workers), total=len(tasks),
                                desc="cleaning", unit="doc", disable=not progress):
            cleaner.consume(result)
    finally:
        writer.flush()  # what was cleaned before any failure is kept
    report = build_report(cleaner, writer, config, time.time() - start, len(paths))
    write_report(report, output_dir)
    return report


def _map_in_order(tasks, workers: int):
    if workers <= 1 or len(tasks) <= 1:
        yield from map(process_file, tasks)
        return
    # 'spawn': the parent may hold threads (JAX, tqdm) that make 'fork' unsafe.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(process_file, tasks, chunksize=1)
