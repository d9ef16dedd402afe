"""The config every experiment file starts from: ``mode``, ``seed`` and each section with every
field at its default (the dataclasses in lm/sections.py hold the defaults, their meaning and
their constraints). An experiment changes only what differs, e.g.::

    config = base.config()
    config.train.steps = 5000

``python -m lm.sections`` prints every section's fields with their defaults.
"""
from __future__ import annotations

import ml_collections

from lm.sections import SECTIONS, base_config


def config(mode: str = "pretrain", *extra: str) -> ml_collections.ConfigDict:
    """The defaults of the sections every mode carries, plus the ``extra`` ones (e.g. 'sft')."""
    return base_config(mode, extra)


def section(name: str, **changes) -> ml_collections.ConfigDict:
    """``config.<name>`` with every field at its default, then ``changes``."""
    return SECTIONS[name].defaults(**changes)
