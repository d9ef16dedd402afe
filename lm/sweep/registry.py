"""Runners: how one variant's config becomes metrics. ``Variant.runner`` names one of them.

A runner is ``run(config, workdir) -> dict`` (final metrics), ``validate(config) -> None``
(raises ConfigError before anything runs) and, optionally, ``evaluate(config, workdir) -> dict``
for the sweep's extra evaluations of a finished run. Runners named by 'module:attribute'
strings are imported only when a sweep uses them.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Callable, Optional, Union

from lm.configlib import ConfigError

Fn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Runner:
    run: Union[Fn, str]
    validate: Union[Fn, str]
    evaluate: Union[Fn, str, None] = None

    def resolved(self, name: str) -> "Runner":
        """This runner with every 'module:attribute' imported."""
        return Runner(*(_load(name, fn) for fn in (self.run, self.validate, self.evaluate)))


def _load(runner: str, fn: Union[Fn, str, None]) -> Optional[Fn]:
    if not isinstance(fn, str):
        return fn
    module_name, _, attribute = fn.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"runner {runner!r} needs {fn}, which cannot be loaded: {e}") from None


def run_train(config, workdir: str, devices=None) -> dict:
    """Pretrains (resuming from the workdir's checkpoint); the last logged value of every metric,
    so a run that was already finished still reports its training and validation figures."""
    from lm.train.loop import pretrain
    from lm.train.metrics import read_metrics
    final = pretrain(config, workdir, devices)
    logged: dict = {}
    for row in read_metrics(workdir):
        logged.update(row)
    return {**logged, **final}


def validate_train(config) -> None:
    from lm.train.experiment import Experiment
    Experiment.from_config(config)


def evaluate_train(config, workdir: str, devices=None) -> dict:
    from lm.train.loop import evaluate_checkpoint
    return evaluate_checkpoint(config, workdir, devices=devices)


RUNNERS: dict[str, Runner] = {
    "train": Runner(run_train, validate_train, evaluate_train),
    "ngram": Runner("lm.baselines.run:run_ngram", "lm.baselines.run:validate_ngram"),
    "sft": Runner("lm.train.sft:run_sft", "lm.train.sft:validate_sft"),
}


def register_runner(name: str, run: Union[Fn, str], validate: Union[Fn, str],
                    evaluate: Union[Fn, str, None] = None) -> None:
    RUNNERS[name] = Runner(run, validate, evaluate)


def get_runner(name: str) -> Runner:
    if name not in RUNNERS:
        close = difflib.get_close_matches(name, list(RUNNERS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown runner {name!r}.{hint} Known runners: {', '.join(sorted(RUNNERS))}.")
    return RUNNERS[name].resolved(name)
