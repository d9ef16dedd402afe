"""What a sweep is: a base experiment, the variants that change it, and how to report them.

Each ``experiments/ablations/<name>.py`` defines ``get_sweep(variant='') -> Sweep``; overrides
are ``{dotted config key: value}``, e.g. ``{'model.mlp': 'swiglu', 'model.d_ff': 344}``.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections

DEFAULT_COLUMNS = ("eval/bits_per_token", "num_params", "train/tokens_per_sec", "wall_seconds")
PLOT_KINDS = ("bar", "line")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One run: the base config with ``overrides`` applied, run by the named runner."""
    name: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    runner: str = "pretrain"


@dataclasses.dataclass(frozen=True)
class Eval:
    """An extra evaluation of each trained checkpoint on the variant's config plus ``overrides``;
    its metrics are reported as ``<label>/<metric>`` (e.g. 'len256/eval/loss')."""
    label: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Plot:
    """A PNG of ``y`` against ``x``; each names an override key, a metric key or 'name'.

    kind 'bar': one bar per variant, labelled by ``x``; 'line': points sorted by ``x``, one line
    per value of ``group`` (an override key or metric) when given. Saved as ``<name>.png``.
    """
    x: str
    y: str
    kind: str = "bar"
    logx: bool = False
    logy: bool = False
    group: Optional[str] = None
    title: str = ""
    name: str = ""

    @property
    def filename(self) -> str:
        stem = self.name or f"{self.y}_by_{self.x}"
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) + ".png"

    @property
    def heading(self) -> str:
        return self.title or f"{self.y} by {self.x}"


@dataclasses.dataclass
class Sweep:
    """A set of runs that share a base experiment config and one results table."""
    name: str
    description: str
    base: ml_collections.ConfigDict
    variants: list[Variant]
    columns: Sequence[str] = DEFAULT_COLUMNS
    plots: Sequence[Plot] = ()
    evals: Sequence[Eval] = ()
    # analysis(results, workdir) -> Markdown appended to results.md; results are the table rows
    # (name, directory, runner, status, wall_seconds, error, each override key, each metric).
    analysis: Optional[Callable[[list[dict], str], str]] = None


def format_value(value: Any) -> str:
    """How a value appears in a variant name: 'swiglu', '2', '0.001', 'True'."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The last component of each dotted key, or the whole key where two would collide."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def variant_name(overrides: Mapping[str, Any], short: Optional[Mapping[str, str]] = None) -> str:
    """'mlp=swiglu,norm=rmsnorm' for {'model.mlp': 'swiglu', 'model.norm': 'rmsnorm'}."""
    short = short or _short_keys(list(overrides))
    return ",".join(f"{short[key]}={format_value(value)}" for key, value in overrides.items())


def grid(axes: Mapping[str, Sequence[Any]], runner: str = "pretrain") -> list[Variant]:
    """The cartesian product of ``axes`` (dotted key -> values), first axis outermost."""
    keys = list(axes)
    short = _short_keys(keys)
    variants = []
    for values in itertools.product(*(axes[key] for key in keys)):
        overrides = dict(zip(keys, values))
        variants.append(Variant(variant_name(overrides, short), overrides, runner))
    return variants
