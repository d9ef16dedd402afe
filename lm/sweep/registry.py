"""Sweep runners are the modes of ``lm.modes`` (one table for ``launch.main`` and sweeps): a
variant's ``runner`` names a mode ('pretrain', 'sft', 'ngram', ...). ``register_runner`` adds a
sweep's own runner to the same table.

A runner is ``run(config, workdir) -> dict`` (final metrics), ``validate(config) -> None``
(raises ConfigError before anything runs) and, optionally, ``evaluate(config, workdir) -> dict``
for the sweep's extra evaluations of a finished run.
"""
from __future__ import annotations

from typing import Union

from lm.configlib import ConfigError
from lm.modes import MODES as RUNNERS
from lm.modes import Fn, Mode as Runner, mode

__all__ = ["RUNNERS", "Runner", "get_runner", "register_runner"]


def register_runner(name: str, run: Union[Fn, str], validate: Union[Fn, str],
                    evaluate: Union[Fn, str, None] = None) -> None:
    RUNNERS[name] = Runner(run, validate, evaluate)


def get_runner(name: str) -> Runner:
    try:
        return mode(name, "runner")
    except ConfigError as e:
        if name in RUNNERS:
            raise
        raise ConfigError(str(e).replace(f"runner={name!r} is not one of the modes.",
                                         f"unknown runner {name!r}.")) from None
