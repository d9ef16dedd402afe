"""The one table of jobs: ``config.mode`` for ``launch.main`` and a sweep variant's ``runner``.

Each mode is ``run(config, workdir, **options) -> dict`` (final metrics), ``validate(config)``
(raises ConfigError for a mistake in any section the mode reads, before any work starts) and,
for sweeps, optionally ``evaluate(config, workdir) -> dict`` (an extra evaluation of a finished
run). Entries are 'module:function' strings, imported only when a mode is used, so that the
table costs nothing to import. Options a mode may take: ``devices``, ``overrides`` (the dotted
command-line overrides, for modes that read a trained workdir), ``interactive`` (sample).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Callable, Optional, Union

from lm.configlib import ConfigError


Fn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Mode:
    run: Union[Fn, str]
    validate: Union[Fn, str]
    evaluate: Union[Fn, str, None] = None
    summary: str = ""
    reads_workdir: bool = False  # uses a trained run: model and data from its config.json
    reads: tuple[str, ...] = ()  # the config sections ``validate`` checks

    def resolved(self, name: str) -> "Mode":
        """This mode with every 'module:function' imported (a clear error naming the mode)."""
        return dataclasses.replace(self, **{field: _load(name, getattr(self, field))
                                            for field in ("run", "validate", "evaluate")})


def _load(name: str, fn: Union[Fn, str, None]) -> Optional[Fn]:
    if not isinstance(fn, str):
        return fn
    module_name, _, attribute = fn.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"runner {name!r} needs {fn}, which cannot be loaded: {e}") from None


TRAINING = ("data", "model", "optimizer", "train", "mesh", "peft")
ALIGNMENT = TRAINING + ("align",)


def _alignment(run: str, summary: str) -> Mode:
    """An alignment mode (lm/align): its own run, the shared check of config.align."""
    return Mode(run, "lm.align.modes:validate_align", summary=summary, reads=ALIGNMENT)


MODES: dict[str, Mode] = {
    "pretrain": Mode("lm.train.loop:run_pretrain", "lm.train.loop:validate_pretrain",
                     "lm.train.loop:evaluate_checkpoint", "train from scratch (or resume)",
                     reads=TRAINING),
    "sft": Mode("lm.train.sft:run_sft", "lm.train.sft:validate_sft",
                "lm.train.loop:evaluate_checkpoint", "instruction tuning from config.init_from",
                reads=TRAINING + ("sft",)),
    "reward": _alignment("lm.align.modes:run_pair_mode",
                         "reward model (Bradley-Terry on preference pairs) from config.init_from"),
    "dpo": _alignment("lm.align.modes:run_pair_mode",
                      "direct preference optimisation (DPO, IPO) from config.init_from"),
    "ppo": _alignment("lm.align.policy:run_policy_mode",
                      "PPO with a KL penalty and a value head from config.init_from"),
    "grpo": _alignment("lm.align.policy:run_policy_mode",
                       "GRPO (group-normalised rewards, no value model) from config.init_from"),
    "eval": Mode("lm.eval.runner:evaluate_workdir", "lm.eval.runner:validate_eval",
                 summary="validation loss and config.eval.tasks of a trained run", reads_workdir=True,
                 reads=("eval", "mesh")),
    "sample": Mode("lm.infer.session:sample_workdir", "lm.infer.session:validate_sample",
                   summary="continue prompts with a trained run", reads_workdir=True,
                   reads=("sample", "mesh")),
    "compile": Mode("lm.train.compile_only:run_compile", "lm.train.loop:validate_pretrain",
                    summary="compile the train step for the mesh; memory, FLOPs, collectives",
                    reads=TRAINING),
    "ngram": Mode("lm.baselines.run:run_ngram", "lm.baselines.run:validate_ngram",
                  summary="Kneser-Ney n-gram baseline", reads=("ngram", "data")),
}


def mode(name: str, what: str = "config.mode") -> Mode:
    """The mode called ``name``, its functions imported; ``what`` names the field in errors."""
    if name not in MODES:
        close = difflib.get_close_matches(str(name), list(MODES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"{what}={name!r} is not one of the modes.{hint} Modes: "
                          f"{', '.join(MODES)}.")
    return MODES[name].resolved(name)


def validate(config) -> Mode:
    """Checks the top-level keys and every section ``config.mode`` reads, before any work
    starts; returns the mode, its functions imported."""
    from lm.sections import check_top_level  # the section classes import jax: only when used

    check_top_level(config)
    entry = mode(config.get("mode"))
    entry.validate(config)
    return entry


def register_mode(name: str, entry: Mode) -> None:
    """Adds a mode (e.g. a sweep's own runner) to the table."""
    MODES[name] = entry
