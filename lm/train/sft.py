"""``config.mode='sft'``: supervised fine-tuning (instruction tuning) of a pretrained checkpoint.

    python -m launch.main --config=experiments/sft_arithmetic.py --workdir=runs/sft \\
        [--config.peft.method=lora] [--config.init_from=runs/demo]

Starts from the latest checkpoint of ``config.init_from`` (pretraining it first from
``config.sft.pretrain_config`` when it holds none), whose model must be this config's model
without PEFT; trains on the instruction mixture of ``config.sft`` (``lm.instruct``) with the loss
on response tokens and their EOS only; and measures held-out exact match before and after. With a
PEFT method only the method's parameters train (``lm.peft``) and are also saved on their own in
``<workdir>/adapter``. Results: ``<workdir>/sft_result.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Optional

import jax
import numpy as np

from lm.configlib import ConfigError, from_section
from lm.data import pipeline as data_lib
from lm.fileio import write_atomically
from lm.train.checkpoint import Checkpointer, CheckpointError
from lm.train.workdir import check_workdir, save_config

log = logging.getLogger("lm.sft")
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


# ----------------------------------------------------------------------------- exact match

def final_answer(text: str) -> str:
    """The last number of a response (a rationale ends with its answer), else the stripped text."""
    from lm.prompting.answers import extract_answer

    return extract_answer(text, "number") or text.strip()


def answer_scores(trainer, params, instances, max_new_tokens: int, batch_size: int) -> tuple[dict, list[dict]]:
    """Greedy answers to held-out instances: exact match of the whole response and of its final
    answer (the two differ for chain-of-thought responses), in percent, and every answer."""
    from lm.eval.scoring import ModelScorer
    from lm.infer.decode import DecodeSettings

    exp = trainer.exp
    vocab = data_lib.vocabulary(exp.data)
    scorer = ModelScorer(trainer.graphdef, jax.device_get(params), exp.model, vocab, exp.data.seq_len,
                         batch_size)
    settings = DecodeSettings(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=(vocab.eos_id,))
    outputs = scorer.generate_tokens([vocab.encode(i.prompt) for i in instances], settings)
    answers = [vocab.decode(tokens) for tokens in outputs]
    targets = [i.responses[0] for i in instances]
    exact = [a.strip() == t.strip() for a, t in zip(answers, targets)]
    final = [final_answer(a) == final_answer(t) for a, t in zip(answers, targets)]
    samples = [{"prompt": i.prompt, "target": t, "answer": a, "exact": e}
               for i, t, a, e in zip(instances, targets, answers, exact)]
    return {"exact_match": 100.0 * float(np.mean(exact)), "answer_accuracy": 100.0 * float(np.mean(final))}, samples


# ----------------------------------------------------------------------------- start

def base_params(config, init_from: str, model_cfg) -> dict:
    """The parameters of the latest checkpoint in ``init_from``, on the host, after checking that
    its model is ``model_cfg`` without PEFT."""
    from lm.eval.scoring import saved_config
    from lm.peft import PeftConfig
    from lm.train.loop import Trainer, restore_checkpoint

    base_config = saved_config(init_from)
    base = Trainer(base_config, init_from, devices=jax.local_devices()[:1])
    wanted = dataclasses.replace(model_cfg, peft=PeftConfig())
    have = dataclasses.replace(base.exp.model, peft=PeftConfig())
    differ = [f"{f.name}: {getattr(have, f.name)!r} there, {getattr(wanted, f.name)!r} here"
              for f in dataclasses.fields(wanted) if getattr(have, f.name) != getattr(wanted, f.name)]
    if differ:
        raise ConfigError(f"config.init_from={init_from!r} holds a different model ({'; '.join(differ)}); "
                          f"make config.model match the pretrained run")
    state, step = restore_checkpoint(base, init_from)
    log.info("starting from step %d of %s", step, init_from)
    return jax.device_get(state.params)


def initial_state(trainer, init_from: str, config):
    """A fresh train state whose base parameters are the pretrained ones (the PEFT parameters
    keep their initial values; a soft prompt starts from the pretrained embeddings)."""
    from lm.train.state import TrainState

    from lm.peft.params import with_base
    from lm.peft.prompt import initialize_soft_prompt

    model_cfg = trainer.exp.model
    state = trainer.init_state()
    base = base_params(config, init_from, model_cfg)
    params = with_base(jax.device_get(state.params), base, model_cfg) if model_cfg.peft.adds_parameters else base
    if model_cfg.peft.method == "prompt":  # from the pretrained embeddings, not the fresh ones
        vocab = data_lib.vocabulary(trainer.exp.data)
        params = initialize_soft_prompt(params, model_cfg, vocab.encode, trainer.exp.seed)
    params = jax.device_put(params, trainer.shardings.params)
    opt_state = jax.jit(trainer.optimizer.init, out_shardings=trainer.shardings.opt_state)(params)
    return TrainState(step=state.step, params=params, opt_state=opt_state)


def ensure_pretrained(cfg: SFTConfig, init_from: str, devices=None) -> None:
    """Pretrains ``cfg.pretrain_config`` into ``init_from`` when it holds no checkpoint."""
    checkpoints = os.path.join(init_from, "checkpoints")
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
        return
    if not cfg.pretrain_config:
        raise CheckpointError(f"config.init_from={init_from!r} holds no checkpoint: pretrain there first, "
                              f"or set config.sft.pretrain_config to an experiment file to train it")
    from lm.configlib import call_file_function
    from lm.train.loop import pretrain

    print(f"no checkpoint in {init_from}: pretraining {cfg.pretrain_config} there first", flush=True)
    pretrain(call_file_function(cfg.pretrain_config, "get_config", "config.sft.pretrain_config"),
             init_from, devices)


# ----------------------------------------------------------------------------- run

def sft(config, workdir: str, devices=None) -> dict:
    """Fine-tunes ``config`` in ``workdir`` (resuming from its own checkpoint if it has one)."""
    from lm.instruct.datasets import instruction_dataset
    from lm.instruct.rows import batches, instruction_rows
    from lm.train.loop import Trainer, train_loop
    from lm.train.metrics import MetricsWriter
    from lm.train.plot import plot_losses

    cfg = sft_config(config)
    init_from = config.get("init_from") or ""
    if not init_from:
        raise ConfigError("config.mode='sft' needs config.init_from=<workdir of a pretrained run>")
    ensure_pretrained(cfg, init_from, devices)
    trainer = Trainer(config, workdir, devices)
    exp = trainer.exp
    os.makedirs(workdir, exist_ok=True)
    check_workdir(workdir, exp)
    vocab = data_lib.vocabulary(exp.data)
    train_arrays, train_report = instruction_rows(mixture_instances(cfg, exp.seed), vocab, exp.data.seq_len,
                                                  pack=cfg.pack, on_overflow=cfg.on_overflow)
    held_out = _dataset(instruction_dataset, cfg.eval_data, "validation", cfg.eval_instances, exp.seed,
                        "config.sft.eval_data / config.sft.eval_instances")
    eval_arrays, _ = instruction_rows(held_out, vocab, exp.data.seq_len, on_overflow=cfg.on_overflow)
    log.info("instruction rows: %s", train_report)
    if len(train_arrays["inputs"]) < exp.data.batch_size:
        raise ConfigError(f"{len(train_arrays['inputs'])} instruction rows are fewer than config.data.batch_size="
                          f"{exp.data.batch_size}: raise config.sft.train_instances")
    train_iter = batches(train_arrays, exp.data.batch_size, exp.seed, jax.process_index(), jax.process_count())
    eval_sets = {"": eval_row_batches(eval_arrays, exp.data.batch_size)}
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), exp.train.keep_checkpoints,
                                exp.train.async_checkpoint)
    try:
        step = checkpointer.latest_step()
        before = None
        if step is None:
            state = initial_state(trainer, init_from, config)
            before, _ = answer_scores(trainer, state.params, held_out, cfg.max_new_tokens, exp.data.batch_size)
            print(f"before fine-tuning: {_fmt(before)}", flush=True)
        else:
            state, data_state = checkpointer.restore(step, trainer.abstract_state)
            train_iter.set_state(data_state)
        save_config(workdir, config, exp)
        writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
        start = time.perf_counter()
        try:
            final, state = train_loop(trainer, state, train_iter, eval_sets, checkpointer, writer)
        finally:
            writer.close()
    finally:
        checkpointer.close()
    after, samples = answer_scores(trainer, state.params, held_out, cfg.max_new_tokens, exp.data.batch_size)
    print(f"after fine-tuning: {_fmt(after)}", flush=True)
    from lm.train.metrics import read_metrics

    logged: dict = {}
    for row in read_metrics(workdir):  # a finished run reports its last logged figures again
        logged.update(row)
    result = {**logged, **final, **{f"sft/after/{k}": v for k, v in after.items()},
              "sft/train_seconds": time.perf_counter() - start, **_row_counts(train_report),
              **trainer.peft_summary()}
    result.update(_before(workdir, before))
    if jax.process_index() == 0:
        _write_results(workdir, trainer, state, result, samples)
        plot_losses(workdir)
    return result


def _fmt(scores: dict) -> str:
    return "  ".join(f"{k} {v:.1f}%" for k, v in scores.items())


def _row_counts(report) -> dict:
    return {f"sft/rows/{k}": v for k, v in dataclasses.asdict(report).items() if isinstance(v, int)}


def _before(workdir: str, before: Optional[dict]) -> dict:
    """The 'before' scores: measured now, or read back from the first (interrupted) attempt."""
    path = os.path.join(workdir, "sft_before.json")
    if before is not None:
        with open(path, "w") as f:
            json.dump(before, f)
    elif os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
    return {f"sft/before/{k}": v for k, v in (before or {}).items()}


def _write_results(workdir: str, trainer, state, result: dict, samples: list[dict]) -> None:
    write_atomically(os.path.join(workdir, "sft_result.json"), json.dumps(result, indent=2, sort_keys=True) + "\n")
    write_atomically(os.path.join(workdir, "sft_answers.jsonl"), "".join(json.dumps(s) + "\n" for s in samples))
    if trainer.exp.model.peft.method not in ("none", "full"):
        from lm.peft.params import save_adapter

        save_adapter(os.path.join(workdir, "adapter"), jax.device_get(state.params), trainer.exp.model)


# ----------------------------------------------------------------------------- sweeps

def run_sft(config, workdir: str, devices=None) -> dict:
    """The sweep runner: fine-tunes (or reads back a finished run) and adds the step time."""
    result = sft(config, workdir, devices)
    tokens_per_step = config.data.batch_size * config.data.seq_len
    if result.get("train/tokens_per_sec"):
        result["sft/step_ms"] = 1000.0 * tokens_per_step / result["train/tokens_per_sec"]
    return result


def validate_sft(config) -> None:
    from lm.train.experiment import Experiment

    Experiment.from_config(config)
    sft_config(config)
    if not config.get("init_from"):
        raise ConfigError("config.mode='sft' needs config.init_from=<workdir of a pretrained run>")
