"""Typed config sections: one frozen dataclass per ``config.<section>``, its fields' defaults,
documentation and constraints declared once, next to the field.

A section class derives from :class:`Section` and declares each field with :func:`option`::

    @dataclasses.dataclass(frozen=True)
    class TrainConfig(Section):
        where = "config.train"
        steps: int = option(2000, "optimizer updates", at_least(1))

Constructing a section checks every field (its type, then its rules) and then the section's own
cross-field :meth:`Section.check`; every error names ``config.<section>.<field>``, the value and
what would be accepted. :func:`from_section` builds a section from a ConfigDict and rejects
unknown keys with the close matches; :meth:`Section.defaults` is the ConfigDict an experiment
starts from, so defaults are written only here.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import os
import re
import typing
from typing import Any, Callable, Mapping, TypeVar

import ml_collections
import numpy as np

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the field and the fix."""


# ----------------------------------------------------------------------------- field rules

@dataclasses.dataclass(frozen=True)
class Rule:
    """A constraint on one field: ``accepts(value)``, what it requires (the error's words) and
    one value it refuses (tests walk every rule of every section with it)."""
    accepts: Callable[[Any], bool]
    requirement: str
    refused: Any


def at_least(minimum, meaning: str = "") -> Rule:
    note = f" ({meaning})" if meaning else ""
    return Rule(lambda v: v >= minimum, f"must be >= {minimum}{note}", minimum - 1)


def positive() -> Rule:
    return Rule(lambda v: v > 0, "must be positive", 0)


def fraction(low_open: bool = True, high_open: bool = True) -> Rule:
    """A share: within (0, 1), with either end allowed when it is not open."""
    low = (lambda v: v > 0) if low_open else (lambda v: v >= 0)
    high = (lambda v: v < 1) if high_open else (lambda v: v <= 1)
    text = f"must lie in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    return Rule(lambda v: low(v) and high(v), text, 1.5)


def one_of(*choices) -> Rule:
    return Rule(lambda v: v in choices, f"is not one of {', '.join(map(repr, choices))}",
                "<no such choice>")


def rule(accepts: Callable[[Any], bool], requirement: str, refused: Any) -> Rule:
    """A constraint of its own kind (e.g. 'a regular expression')."""
    return Rule(accepts, requirement, refused)


def option(default, doc: str = "", *rules: Rule, escapes: bool = False):
    """A section field: its default, one line of documentation, the rules its values must pass.
    ``escapes``: backslash escapes given in the config (``'\\n'`` typed on a command line) are
    read as the characters they stand for."""
    return dataclasses.field(default=default,
                             metadata={"doc": doc, "rules": rules, "escapes": escapes})


# ----------------------------------------------------------------------------- sections

class Section:
    """Base of the typed sections; subclasses are frozen dataclasses that set ``where``."""
    where = "config"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            _check_field(self, field)
        self.check()

    def check(self) -> None:
        """Constraints between fields; raise a ConfigError naming them (override)."""

    @classmethod
    def from_config(cls: type[T], section: Any) -> T:
        return from_section(cls, section, cls.where)

    @classmethod
    def defaults(cls, **changes) -> ml_collections.ConfigDict:
        """This section as a ConfigDict: every field at its default, then ``changes``."""
        values = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in changes:
            if key not in values:
                raise ConfigError(unknown_key_message(key, list(values), cls.where))
        return ml_collections.ConfigDict({**values, **changes})


def fields_with_rules(cls) -> list[tuple[str, Rule]]:
    """(field name, rule) for every rule of a section class: what a test walks."""
    return [(f.name, r) for f in dataclasses.fields(cls) for r in f.metadata.get("rules", ())]


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_KINDS = {
    int: ("an integer", lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, bool)),
    bool: ("True or False", lambda v: isinstance(v, (bool, np.bool_))),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _check_field(section: Section, field: dataclasses.Field) -> None:
    value = getattr(section, field.name)
    name = f"{section.where}.{field.name}"
    kind = _KINDS.get(_field_types(type(section)).get(field.name))
    if kind is not None:
        if not kind[1](value):
            raise ConfigError(f"{name}={value!r} must be {kind[0]}")
        if kind[0] == "a number" and not isinstance(value, float):
            object.__setattr__(section, field.name, float(value))
    for r in field.metadata.get("rules", ()):
        if not r.accepts(value):
            doc = field.metadata.get("doc")
            raise ConfigError(f"{name}={value!r} {r.requirement}" + (f" ({doc})" if doc else ""))


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def read_escapes(text: str) -> str:
    """'\\n', '\\t', '\\r' and '\\\\' as the characters they stand for; other backslashes stay."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def as_mapping(section: Any) -> Mapping[str, Any]:
    if section is None:
        return {}
    if hasattr(section, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return section.to_dict()
    if isinstance(section, Mapping):
        return section
    raise ConfigError(f"expected a config section (ConfigDict or dict), got {type(section).__name__}")


def unknown_key_message(key: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(f'{where}.{c}') for c in close)}?" if close else ""
    return (f"unknown config key {where}.{key!r}.{hint} Known keys of {where}: "
            f"{', '.join(sorted(known))}.")


def from_section(cls: type[T], section: Any, where: str = "") -> T:
    """Builds the frozen dataclass ``cls`` from a config section named ``where`` (default: the
    class's own ``where``, e.g. 'config.model'); unknown keys are refused with the close matches."""
    where = where or getattr(cls, "where", "config")
    values = dict(as_mapping(section))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(unknown_key_message(key, list(fields), where))
        if fields[key].metadata.get("escapes") and isinstance(value, str):
            values[key] = read_escapes(value)
    try:
        return cls(**values)
    except TypeError as e:  # missing required field
        raise ConfigError(f"{where}: {e}") from None


def call_file_function(spec: str, function: str, flag: str = "--config"):
    """``path[:variant]`` -> what ``function(variant)`` of the Python file at ``path`` returns
    (experiment files define ``get_config``, sweep files ``get_sweep``)."""
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"{flag}={spec}: no file {path}")
    name = "config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise ConfigError(f"{flag}={spec}: {path} defines no {function}(variant)")
    return getattr(module, function)(variant)
