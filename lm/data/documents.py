"""Documents and the corpus error: the leaf that every reader of text imports.

``lm.data.corpus`` (embedded corpora and files) and ``lm.data.sources`` (TFDS and Hugging Face
datasets) both return lists of ``Document`` and raise ``CorpusError``; keeping the two names here
lets each reader import them without importing the other.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Document:
    name: str  # file name, e.g. 'hamlet_gut.txt', or '<split>:<index>' of a dataset
    text: str


class CorpusError(ValueError):
    """A corpus cannot be read; the message names the file and the fix."""
