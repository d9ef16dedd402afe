"""``config.sft``: the instruction data of supervised fine-tuning and its held-out instances.

``mixture_instances`` draws the training instances of ``config.sft.mixture`` (each dataset's
share by weight, interleaved); ``held_out_instances`` the evaluation instances;
``eval_row_batches`` cuts held-out rows into fixed-size batches for the validation loss.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lm.configlib import ConfigError, Section, at_least, one_of, option, rule

OVERFLOW_POLICIES = ("skip", "error")


def _is_mixture(text) -> bool:
    try:
        mixture_parts(text)
        return True
    except ConfigError:
        return False


@dataclasses.dataclass(frozen=True)
class SFTConfig(Section):
    """``config.sft``: the instruction data and the before/after evaluation."""
    where = "config.sft"
    mixture: str = option("arithmetic", "'name[*weight],...' of lm.instruct.datasets names",
                          rule(_is_mixture, "must list instruction datasets as "
                               "'name[*weight],...' with positive weights", ""))
    train_instances: int = option(7000, "instances drawn from the mixture (by weight)",
                                  at_least(1))
    eval_data: str = option("arithmetic", "held-out instances (the 'validation' split)")
    eval_instances: int = option(200, "held-out instances answered before and after",
                                 at_least(1))
    pack: bool = option(False, "several instances per row (segment ids)")
    on_overflow: str = option("skip", "an instance longer than the context: skip (counted) | "
                              "error", one_of(*OVERFLOW_POLICIES))
    max_new_tokens: int = option(24, "greedy answer length for exact match", at_least(1))
    pretrain_config: str = option("", "experiment file trained into config.init_from when it "
                                  "holds no checkpoint; '' = refuse")


def mixture_parts(mixture: str) -> list[tuple[str, float]]:
    """'a*0.9,b*0.1' -> [('a', 0.9), ('b', 0.1)]; a name without a weight weighs 1."""
    parts = []
    for item in (p.strip() for p in mixture.split(",")):
        if not item:
            continue
        name, _, weight = item.rpartition("*") if "*" in item else (item, "", "1")
        try:
            value = float(weight)
        except ValueError:
            raise ConfigError(f"config.sft.mixture item {item!r}: the weight after '*' must be a number") from None
        if value <= 0:
            raise ConfigError(f"config.sft.mixture item {item!r}: the weight must be positive")
        parts.append((name.strip(), value))
    if not parts:
        raise ConfigError("config.sft.mixture is empty: name at least one instruction dataset, e.g. 'arithmetic'")
    return parts


def _dataset(instruction_dataset, name: str, split: str, count: int, seed: int, fields: str) -> list:
    """The named instruction dataset, its errors (bad name, file, count) as config errors."""
    try:
        return instruction_dataset(name, split, count, seed)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"{fields}: {e}") from None


def sft_config(config) -> SFTConfig:
    return SFTConfig.from_config(config.get("sft"))


# ----------------------------------------------------------------------------- data

def mixture_instances(cfg: SFTConfig, seed: int) -> list:
    """``train_instances`` training instances, each dataset's share by weight, interleaved."""
    from lm.instruct.datasets import instruction_dataset

    parts = mixture_parts(cfg.mixture)
    total = sum(w for _, w in parts)
    counts = [int(round(cfg.train_instances * w / total)) for _, w in parts]
    instances = []
    for index, ((name, _), count) in enumerate(zip(parts, counts)):
        if count:
            instances.extend(_dataset(instruction_dataset, name, "train", count, seed + index,
                                      "config.sft.mixture / config.sft.train_instances"))
    order = np.random.default_rng(seed).permutation(len(instances))
    return [instances[i] for i in order]


def held_out_instances(cfg: SFTConfig, seed: int) -> list:
    """``eval_instances`` instances of ``eval_data``'s validation split."""
    from lm.instruct.datasets import instruction_dataset

    return _dataset(instruction_dataset, cfg.eval_data, "validation", cfg.eval_instances, seed,
                    "config.sft.eval_data / config.sft.eval_instances")


def eval_row_batches(arrays: dict[str, np.ndarray], batch_size: int,
                     weight_keys: tuple[str, ...] = ("weights",)) -> list[dict[str, np.ndarray]]:
    """Held-out rows in order, the last batch padded with copies of row 0 whose ``weight_keys``
    (e.g. both sides of a preference pair) are zero."""
    rows = len(arrays[weight_keys[0]])
    batches = []
    for start in range(0, rows, batch_size):
        picks = np.arange(start, start + batch_size)
        real = picks < rows
        batch = {key: value[np.where(real, picks, 0)] for key, value in arrays.items()}
        for key in weight_keys:
            batch[key] = batch[key] * real[:, None]
        batches.append(batch)
    return batches
