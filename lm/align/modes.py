"""``config.mode`` = 'reward' | 'dpo' | 'ppo' | 'grpo': alignment tuning from an SFT run.

    python -m launch.main --config=experiments/align_arithmetic.py:dpo --workdir=runs/dpo

Each mode is the fit loop (``lm.train.fit``) with its own data and train step: preference pairs
and the Bradley-Terry or DPO loss (``lm.align.pairs``), or prompts whose rollouts are sampled,
rewarded and optimised with the clipped objective (``lm.align.policy``). Checkpoints, resume,
the spike guard and clear errors are the fit loop's. Results: ``<workdir>/align_result.json``.
"""
from __future__ import annotations

import json
import logging
import os
import time

import jax

from lm.align.config import AlignConfig, align_config
from lm.configlib import ConfigError
from lm.fileio import write_atomically
from lm.train.fit import fit
from lm.train.metrics import last_logged

log = logging.getLogger("lm.align")


# ----------------------------------------------------------------------------- data

def preference_pairs(align: AlignConfig, split: str, count: int, seed: int) -> tuple[list, dict]:
    """The pairs of ``config.align.pairs``' ``split`` (at most ``count``) and the counts of
    skipped rows."""
    from lm.align import preference

    source = align.pairs
    if source in ("arithmetic", "arithmetic_rationale"):
        pairs = preference.arithmetic_pairs(split, count, align.digits, source.endswith("rationale"), seed)
        return pairs, {}
    kind, _, path = source.partition(":")
    if kind != "jsonl" or not path:
        raise ConfigError(f"config.align.pairs={source!r} must be 'arithmetic', "
                          f"'arithmetic_rationale', 'sampled' or 'jsonl:<path>'")
    try:
        pairs, skipped = preference.read_preference_jsonl(path, split, None, seed)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"config.align.pairs: {e}") from None
    return pairs[:count], dict(skipped.as_dict())  # a file gives all its pairs, up to the count


def pair_arrays(trainer, align: AlignConfig, split: str, count: int) -> tuple[dict, dict]:
    from lm.align.preference import pair_rows

    if align.pairs == "sampled":
        from lm.align.sampled import sampled_preference_pairs
        pairs, skipped = sampled_preference_pairs(trainer, align, split, count)
    else:
        pairs, skipped = preference_pairs(align, split, count, trainer.exp.seed)
    arrays, report = pair_rows(pairs, trainer.vocab, trainer.exp.data.seq_len, align.on_overflow)
    log.info("%s pairs: %s; rows skipped while reading: %s", split, report.summary(), skipped)
    if len(arrays["chosen_inputs"]) == 0:
        raise ConfigError(f"no {split} preference pair of config.align.pairs={align.pairs!r} fits "
                          f"config.data.seq_len={trainer.exp.data.seq_len}: {report.summary()}")
    return arrays, {"report": report.summary(), "read_skips": skipped}


def eval_instances(align: AlignConfig, seed: int) -> list:
    from lm.instruct.datasets import instruction_dataset
    try:
        return instruction_dataset(align.eval_data, "validation", align.eval_instances, seed)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"config.align.eval_data / eval_instances: {e}") from None


# ----------------------------------------------------------------------------- pair modes

def run_pair_mode(config, workdir: str, devices=None) -> dict:
    """reward or dpo: the pair objective through the fit loop."""
    align = validate_align(config)
    ensure_inputs(config, align, devices)
    return fit_and_report(*pair_training(config, workdir, devices))


def pair_training(config, workdir: str, devices=None, evaluate: bool = True) -> tuple:
    """(trainer with its pair step, train batches, eval sets, hooks, extra results);
    ``evaluate=False`` leaves out the answers before and after."""
    from lm.align.evaluation import PolicyEvaluation
    from lm.align.pairs import OBJECTIVES, USES_REFERENCE, PairValidation, make_pair_step
    from lm.align.reward_source import RewardSource
    from lm.align.trainer import AlignTrainer
    from lm.train.sft_data import eval_row_batches
    from lm.align.preference import pair_batches

    kind, align = config.mode, align_config(config)
    trainer = AlignTrainer(config, workdir, devices)
    exp = trainer.exp
    train, train_info = pair_arrays(trainer, align, "train", align.train_pairs)
    held_out, _ = pair_arrays(trainer, align, "validation", align.eval_pairs)
    train = {k: v for k, v in train.items() if k != "prompt_lengths"}
    held_out = {k: v for k, v in held_out.items() if k != "prompt_lengths"}
    if len(train["chosen_inputs"]) < exp.data.batch_size:
        raise ConfigError(f"{len(train['chosen_inputs'])} training pairs are fewer than "
                          f"config.data.batch_size={exp.data.batch_size}: raise config.align.train_pairs")
    reference = trainer.reference_params() if USES_REFERENCE[kind] else None
    objective = OBJECTIVES[kind](align)
    step = make_pair_step(trainer, objective, reference)
    trainer.train_step = lambda state, batch: step(state, batch, reference)
    trainer.validation = PairValidation(trainer, objective, reference)
    hooks = []
    if kind != "reward" and evaluate:
        hooks.append(PolicyEvaluation(trainer, eval_instances(align, exp.seed), reference,
                                      RewardSource(trainer, align)))
    train_iter = pair_batches(train, exp.data.batch_size, exp.seed, jax.process_index(), jax.process_count())
    eval_sets = {"": eval_row_batches(held_out, exp.data.batch_size, ("chosen_weights", "rejected_weights"))}
    return trainer, train_iter, eval_sets, hooks, {"align/pairs": train_info["report"]}


def fit_and_report(trainer, train_iter, eval_sets, hooks, extra: dict) -> dict:
    start = time.perf_counter()
    final, _ = fit(trainer, lambda: trainer.state_from_params(trainer.initial_params()),
                   train_iter, eval_sets, hooks)
    result = {**last_logged(trainer.workdir), **final, **extra,
              "align/train_seconds": time.perf_counter() - start, **trainer.peft_summary()}
    if jax.process_index() == 0:
        write_atomically(os.path.join(trainer.workdir, "align_result.json"),
                         json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    return result


# ----------------------------------------------------------------------------- checks

def _planned(spec: str, workdir: str, field: str, config_field: str):
    """The config that ``spec`` would train into the empty ``workdir``, or a ConfigError."""
    from lm.configlib import call_file_function

    if not spec:
        raise ConfigError(f"{field}: {workdir!r} holds no checkpoint; train it first, or set "
                          f"config.align.{config_field} to the experiment that trains it")
    return call_file_function(spec, "get_config", f"config.align.{config_field}")


def ensure_trained(spec: str, workdir: str, what: str, config_field: str, devices=None) -> None:
    """Trains ``spec``'s experiment into ``workdir`` when it holds no checkpoint (announced)."""
    from lm.modes import mode
    from lm.train.sft import pretrained

    if pretrained(workdir):
        return
    config = _planned(spec, workdir, what, config_field)
    print(f"{what}: {workdir!r} holds no checkpoint: training it first with {spec} "
          f"(config.mode={config.mode!r})", flush=True)
    mode(config.mode).run(config, workdir, devices=devices)


def ensure_inputs(config, align: AlignConfig, devices=None) -> None:
    """The SFT run (and PPO's reward model) this run starts from, trained first when missing."""
    ensure_trained(align.start_config, config.init_from, "config.init_from", "start_config", devices)
    kind, path = align.reward_kind
    if config.mode in ("ppo", "grpo") and kind == "run":
        ensure_trained(align.reward_config, path, "config.align.reward", "reward_config", devices)


def validate_align(config) -> AlignConfig:
    """Every section the mode reads and its starting run, checked before anything trains."""
    from lm.align.trainer import check_align_model
    from lm.train.experiment import Experiment
    from lm.train.saved import read_config
    from lm.train.sft import check_base_model, pretrained

    check_align_model(config)
    exp = Experiment.from_config(config)
    align = align_config(config)
    init_from = config.init_from
    start = read_config(init_from) if pretrained(init_from) else _planned(align.start_config, init_from,
                                                                           "config.init_from", "start_config")
    check_base_model(Experiment.from_config(start).model, exp.model, f"config.init_from={init_from!r}")
    kind, path = align.reward_kind
    if config.mode in ("reward", "dpo") and align.pairs == "sampled" and kind != "fn":
        raise ConfigError(f"config.align.pairs='sampled' ranks samples with a reward function; set "
                          f"config.align.reward='fn:<name>' (it is {align.reward!r})")
    if config.mode in ("ppo", "grpo") and kind == "run" and not pretrained(path):
        _planned(align.reward_config, path, "config.align.reward", "reward_config")
    if config.mode == "grpo" and exp.data.batch_size % align.group_size:
        raise ConfigError(f"config.data.batch_size={exp.data.batch_size} must be a multiple of "
                          f"config.align.group_size={align.group_size} (rows = prompts x group)")
    if config.mode in ("ppo", "grpo") and exp.data.batch_size % align.minibatches:
        raise ConfigError(f"config.data.batch_size={exp.data.batch_size} must divide by "
                          f"config.align.minibatches={align.minibatches}")
    return align
