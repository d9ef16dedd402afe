"""The config of a trained workdir: its config.json, with what may change when the run is used.

A workdir's ``config.json`` is the source of truth for everything that shaped the checkpoint:
model, data, optimizer, train, PEFT. Using the run (evaluating, sampling, scoring, exporting,
fine-tuning from it) may change only the use-time sections (``USE_TIME_SECTIONS``), plus explicit
overrides such as a longer evaluation context; an override of the model's shape is refused with
the field named, since the checkpoint could not be read into it.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Mapping, Optional

import jax
import ml_collections

from lm.configlib import ConfigError
from lm.parallel import MeshConfig
from lm.train.workdir import PARAMETER_FIELDS

log = logging.getLogger("lm.run")

USE_TIME_SECTIONS = ("mode", "seed", "eval", "sample", "mesh")


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """``<workdir>/config.json`` as a ConfigDict (a clear error when the workdir has none)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{path} not found: {workdir} is not a training workdir (train there "
                          f"first, or point --workdir at a trained run)")
    try:
        with open(path) as f:
            saved = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); restore it from the run's launch "
                          f"command") from None
    return ml_collections.ConfigDict(_peft_in_its_section(saved))


def _peft_in_its_section(saved: dict) -> dict:
    """A config.json written before PEFT moved out of the model section holds it as model.peft;
    it is read as config.peft (which wins where both are present), its one home."""
    model = saved.get("model")
    if isinstance(model, dict) and "peft" in model:
        nested = model.pop("peft")
        saved.setdefault("peft", nested)
    return saved


def workdir_config(workdir: str, overrides: Optional[Mapping[str, Any]] = None, use_time=None,
                   devices=None) -> ml_collections.ConfigDict:
    """The saved config with ``use_time``'s use-time sections and the dotted ``overrides``."""
    config = read_config(workdir)
    if use_time is not None:
        for section in USE_TIME_SECTIONS:
            if section in use_time:
                value = use_time[section]
                config[section] = copy.deepcopy(value.to_dict() if hasattr(value, "to_dict") else value)
    if use_time is None or "mesh" not in use_time:
        config.mesh = fitting_mesh(config.get("mesh"), len(devices or jax.devices()))
    for key, value in (overrides or {}).items():
        if key.split(".")[0] not in USE_TIME_SECTIONS:
            _override(config, key, value, workdir)
    return config


def fitting_mesh(section, num_devices: int) -> dict:
    """The saved mesh where it fits ``num_devices``; otherwise the default mesh (data parallel
    over every device) with the saved layout rules."""
    saved = MeshConfig.from_config(section or {})
    try:
        saved.resolve(num_devices)
        return dict(section or {})
    except ConfigError as e:
        log.info("the saved mesh does not fit %d devices (%s); using data=-1", num_devices, e)
        return {"rules": saved.rules}


def _override(config, key: str, value, workdir: str) -> None:
    parts = key.split(".")
    if _saved_value(config, parts) == value:
        return
    shaping = PARAMETER_FIELDS + ("peft",)  # model.peft: PEFT's old home, refused like config.peft
    if parts[0] == "peft" or (parts[0] == "model" and len(parts) > 1 and parts[1] in shaping):
        raise ConfigError(
            f"--config.{key}: the model of a trained run comes from {workdir}/config.json "
            f"(saved {_saved_value(config, parts)!r}); drop the override, or train a new run")
    node = config
    for part in parts[:-1]:
        if part not in node:
            raise ConfigError(f"--config.{key}: {workdir}/config.json has no section {part!r}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"--config.{key}: {workdir}/config.json has no field {parts[-1]!r} there")
    node[parts[-1]] = value


def _saved_value(config, parts) -> Any:
    node = config
    for part in parts:
        if not hasattr(node, "get") or part not in node:
            return None
        node = node[part]
    return node
