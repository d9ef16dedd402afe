"""``config.sft``: the instruction data of supervised fine-tuning and its held-out instances.

``mixture_instances`` draws the training instances of ``config.sft.mixture`` (each dataset's
share by weight, interleaved); ``held_out_instances`` the evaluation instances;
``eval_row_batches`` cuts held-out rows into fixed-size batches for the validation loss.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lm.configlib import ConfigError, from_section

OVERFLOW_POLICIES = ("skip", "error")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """``config.sft``: the instruction data and the before/after evaluation."""
    mixture: str = "arithmetic"       # 'name[*weight],...' of lm.instruct.datasets names
    train_instances: int = 7000       # instances drawn from the mixture (by weight)
    eval_data: str = "arithmetic"     # held-out instances (the 'validation' split)
    eval_instances: int = 200
    pack: bool = False                # several instances per row (segment ids)
    on_overflow: str = "skip"         # an instance longer than the context: skip (counted) | error
    max_new_tokens: int = 24          # greedy answer length for exact match
    pretrain_config: str = ""         # experiment file trained into init_from when it is empty

    def validated(self) -> "SFTConfig":
        if self.on_overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"config.sft.on_overflow={self.on_overflow!r}: use one of {OVERFLOW_POLICIES}")
        for name in ("train_instances", "eval_instances", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config.sft.{name}={getattr(self, name)} must be >= 1")
        mixture_parts(self.mixture)
        return self


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
    return from_section(SFTConfig, config.get("sft"), "config.sft").validated()


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


def eval_row_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Held-out rows in order, the last batch padded with weightless copies of row 0."""
    rows = len(arrays["weights"])
    batches = []
    for start in range(0, rows, batch_size):
        picks = np.arange(start, start + batch_size)
        real = picks < rows
        batch = {key: value[np.where(real, picks, 0)] for key, value in arrays.items()}
        batch["weights"] = batch["weights"] * real[:, None]
        batches.append(batch)
    return batches
