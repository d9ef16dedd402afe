"""Corpus cleaning: Gutenberg boilerplate, quality filters, exact and near de-duplication,
personal-data reduction. ``python -m lm.data.clean --input=DIR --output=DIR`` runs it all."""
from lm.data.clean.config import CleanConfig, DedupConfig, InputLimits, QualityConfig
from lm.data.clean.pipeline import clean_files
from lm.data.clean.reading import list_inputs

__all__ = ["CleanConfig", "DedupConfig", "InputLimits", "QualityConfig", "clean_files",
           "list_inputs"]
