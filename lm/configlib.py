"""Typed config sections: turn an ml_collections section into a frozen dataclass once.

Every subsystem declares a frozen dataclass (``ModelConfig``, ``DataConfig``, ...) and builds it
with :func:`from_section`, which rejects unknown keys with the close matches so that a typo in
an experiment file or on the command line fails at start-up with a message that names the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the field and the fix."""


def _as_mapping(section: Any) -> Mapping[str, Any]:
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


def from_section(cls: type[T], section: Any, where: str) -> T:
    """Builds the frozen dataclass ``cls`` from a config section named ``where`` (e.g. 'config.model')."""
    values = dict(_as_mapping(section))
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            raise ConfigError(unknown_key_message(key, known, where))
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
