"""The sections of an experiment config: ``config.<name>`` -> the typed section class that holds
its fields, defaults, documentation and constraints (``lm.configlib.Section``).

``configs/base.py`` builds an experiment's starting config from this table, so a default is
written once, in its dataclass; ``describe`` prints every field for the README's reference.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from lm.align.config import AlignConfig
from lm.baselines.run import NGramConfig
from lm.configlib import ConfigError, Section, unknown_key_message
from lm.data.config import DataConfig
from lm.eval.tasks import EvalConfig
from lm.infer.session import SampleConfig
from lm.models.config import ModelConfig
from lm.parallel.mesh import MeshConfig
from lm.peft.config import PeftConfig
from lm.train.experiment import TrainConfig
from lm.train.optimizer import OptimizerConfig
from lm.train.sft_data import SFTConfig

SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig, "model": ModelConfig, "optimizer": OptimizerConfig,
    "train": TrainConfig, "mesh": MeshConfig, "peft": PeftConfig, "sample": SampleConfig,
    "eval": EvalConfig, "sft": SFTConfig, "ngram": NGramConfig, "align": AlignConfig,
}
# Plain values at the top of a config, with their defaults.
TOP_LEVEL = {
    "mode": "pretrain",  # the job: a name of lm.modes.MODES
    "seed": 0,           # parameters, data order and dropout all derive from it
    "init_from": "",     # sft, reward, dpo, ppo, grpo: the workdir of the run it starts from
}
# The sections every config carries; the others are added by the modes that read them.
COMMON = ("data", "model", "optimizer", "train", "sample", "eval", "mesh", "peft")


def base_config(mode: str = "pretrain", extra: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """A config with ``mode``, ``seed`` and every section in COMMON plus ``extra`` at its
    defaults: what an experiment file starts from and changes."""
    config = ml_collections.ConfigDict({"mode": mode, "seed": TOP_LEVEL["seed"]})
    for name in COMMON + tuple(extra):
        if name not in SECTIONS:
            raise ConfigError(unknown_key_message(name, list(SECTIONS), "config"))
        config[name] = SECTIONS[name].defaults()
    return config


def check_top_level(config) -> None:
    """Every top-level key is a section or a known value."""
    known = list(SECTIONS) + list(TOP_LEVEL)
    for key in config.keys():
        if key not in known:
            raise ConfigError(unknown_key_message(key, known, "config"))


def describe(name: str) -> str:
    """``config.<name>``'s fields, one per line: name, default and what it means."""
    lines = [f"config.{name}:"]
    for field in dataclasses.fields(SECTIONS[name]):
        doc = field.metadata.get("doc", "")
        lines.append(f"  {field.name} = {field.default!r}" + (f"  # {doc}" if doc else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(describe(name) for name in SECTIONS))
