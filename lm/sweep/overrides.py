"""Dotted-key overrides of a ConfigDict: every key must exist and every value fit its field."""
from __future__ import annotations

import ast
import copy
from typing import Any, Mapping, Sequence

import ml_collections

from lm.configlib import ConfigError, unknown_key_message

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _parent(config: ml_collections.ConfigDict, key: str):
    """The section holding ``key`` and the field's name in it; unknown parts name close matches."""
    node, where = config, "config"
    for part in key.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            known = list(node.keys()) if hasattr(node, "keys") else []
            raise ConfigError(unknown_key_message(part, known, where))
        parent, node, where = node, node[part], f"{where}.{part}"
    return parent, part


def current_value(config: ml_collections.ConfigDict, key: str) -> Any:
    parent, field = _parent(config, key)
    return parent[field]


def _type_error(key: str, old: Any, new: Any) -> ConfigError:
    return ConfigError(f"config.{key}={new!r} is a {type(new).__name__}, but the base value "
                       f"{old!r} is a {type(old).__name__}")


def check_type(key: str, old: Any, new: Any) -> None:
    """``new`` may replace ``old``: same kind of value (an int may replace a float)."""
    if old is None or new is None:
        return
    if isinstance(old, bool) or isinstance(new, bool):
        ok = isinstance(old, bool) and isinstance(new, bool)
    elif isinstance(old, int):
        ok = isinstance(new, int)
    elif isinstance(old, float):
        ok = isinstance(new, (int, float))
    elif isinstance(old, str):
        ok = isinstance(new, str)
    elif isinstance(old, (list, tuple)):
        ok = isinstance(new, (list, tuple))
    elif isinstance(old, (ml_collections.ConfigDict, dict)):
        ok = isinstance(new, (ml_collections.ConfigDict, Mapping))
    else:
        ok = isinstance(new, type(old))
    if not ok:
        raise _type_error(key, old, new)


def apply_overrides(base: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``base`` with ``overrides`` set; raises ConfigError on an unknown key or a bad type."""
    config = copy.deepcopy(base)
    for key, value in overrides.items():
        parent, field = _parent(config, key)
        check_type(key, parent[field], value)
        if isinstance(value, Mapping) and not isinstance(value, ml_collections.ConfigDict):
            value = ml_collections.ConfigDict(dict(value))
        if isinstance(parent[field], float) and isinstance(value, int):
            value = float(value)
        parent[field] = value
    return config


def parse_value(text: str, current: Any, key: str) -> Any:
    """``text`` as the type of the field it replaces, as ``--config.<key>=<value>`` would parse it."""
    try:
        if isinstance(current, bool):
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (list, tuple)):
            return type(current)(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        raise ConfigError(f"--set {key}={text}: cannot read {text!r} as a "
                          f"{type(current).__name__} (the base value is {current!r})") from None
    return _guess(text)


def _guess(text: str) -> Any:
    """int, float, bool or None when ``text`` reads as one, else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_assignments(assignments: Sequence[str],
                      base: ml_collections.ConfigDict) -> dict[str, Any]:
    """``['train.steps=100', 'model.mlp=swiglu']`` -> typed overrides of ``base``."""
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if key.startswith("config."):
            key = key[len("config."):]
        if not sep or not key:
            raise ConfigError(f"--set {assignment!r}: expected <dotted.key>=<value>")
        try:
            current = current_value(base, key)
        except ConfigError as e:
            raise ConfigError(f"--set {assignment}: {e}") from None
        overrides[key] = parse_value(text, current, key)
    return overrides
