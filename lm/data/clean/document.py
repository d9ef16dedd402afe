"""The per-document stages, run in worker processes: read, boilerplate, quality, privacy, and
the MinHash signature the near de-duplication needs later."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from lm.data.clean import minhash
from lm.data.clean.boilerplate import strip_boilerplate
from lm.data.clean.config import CleanConfig
from lm.data.clean.privacy import reduce_personal_data
from lm.data.clean.quality import filter_quality
from lm.data.clean.reading import SkippedInput, read_text
from lm.data.clean.stats import StageStats

PER_DOCUMENT_STAGES = ("boilerplate", "quality", "privacy")


@dataclasses.dataclass
class DocumentResult:
    name: str
    text: str | None  # None: dropped or skipped
    skip_reason: str | None = None  # set when the input could not be used at all
    signature: np.ndarray | None = None
    quality_signals: dict[str, float] | None = None
    stats: dict[str, StageStats] = dataclasses.field(
        default_factory=lambda: {stage: StageStats() for stage in PER_DOCUMENT_STAGES})


def process_file(task: tuple[pathlib.Path, str, CleanConfig]) -> DocumentResult:
    """Never raises: any failure becomes the document's skip reason."""
    path, name, config = task
    result = DocumentResult(name, None)
    try:
        text = read_text(path, config.limits)
        _clean(text, config, result)
    except SkippedInput as e:
        result.skip_reason = str(e)
    except Exception as e:  # noqa: BLE001 - one bad document must not stop the run
        result.skip_reason = f"error: {type(e).__name__}: {e}"
        result.text = None
    return result


def _clean(text: str, config: CleanConfig, result: DocumentResult) -> None:
    text = strip_boilerplate(text, result.stats["boilerplate"])
    if text is None:
        return
    text, result.quality_signals = filter_quality(text, config.quality, result.stats["quality"])
    if text is None:
        return
    text = reduce_personal_data(text, result.stats["privacy"])
    a, b = minhash.permutations(config.dedup.num_permutations, config.dedup.seed)
    hashes = minhash.shingle_hashes(text, config.dedup.shingle_words)
    result.signature = minhash.signature(hashes, a, b)
    result.text = text
