"""``config.mode='sft'``: supervised fine-tuning (instruction tuning) of a pretrained checkpoint.

    python -m launch.main --config=experiments/sft_arithmetic.py --workdir=runs/sft \\
        [--config.peft.method=lora] [--config.init_from=runs/demo]

Starts from the latest checkpoint of ``config.init_from`` (pretraining it first from
``config.sft.pretrain_config`` when it holds none), whose model must be this config's model
without PEFT; trains on the instruction mixture of ``config.sft`` (``lm.instruct``) with the loss
on response tokens and their EOS only; and measures held-out exact match before and after. With a
PEFT method only the method's parameters train (``lm.peft``) and are also saved on their own in
``<workdir>/adapter``. Results: ``<workdir>/sft_result.json``.

SFT is the fit loop (``lm.train.fit``) with instruction rows as data, the pretrained parameters
as the initial state and an exact-match hook; every section is checked before anything trains.
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

from lm.configlib import ConfigError
from lm.fileio import write_atomically
from lm.train.checkpoint import CheckpointError
from lm.train.fit import fit
from lm.train.metrics import last_logged
from lm.train.run import Run
from lm.train.sft_data import (SFTConfig, eval_row_batches, held_out_instances, mixture_instances,
                               mixture_parts, sft_config)
from lm.train.trainer import Trainer

__all__ = ["SFTConfig", "eval_row_batches", "final_answer", "mixture_parts", "sft", "run_sft",
           "validate_sft"]
log = logging.getLogger("lm.sft")


# ----------------------------------------------------------------------------- exact match

def final_answer(text: str) -> str:
    """The last number of a response (a rationale ends with its answer), else the stripped text."""
    from lm.prompting.answers import extract_answer

    return extract_answer(text, "number") or text.strip()


def answer_scores(run: Run, params, instances, max_new_tokens: int, batch_size: int) -> tuple[dict, list[dict]]:
    """Greedy answers to held-out instances on the run's mesh: exact match of the whole response
    and of its final answer (the two differ for chain-of-thought responses), in percent, and
    every answer."""
    from lm.infer.decode import DecodeSettings

    vocab = run.vocab
    scorer = run.scorer(params, batch_size)
    settings = DecodeSettings(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=(vocab.eos_id,))
    outputs = scorer.generate_tokens([vocab.encode(i.prompt) for i in instances], settings)
    answers = [vocab.decode(tokens) for tokens in outputs]
    targets = [i.responses[0] for i in instances]
    exact = [a.strip() == t.strip() for a, t in zip(answers, targets)]
    final = [final_answer(a) == final_answer(t) for a, t in zip(answers, targets)]
    samples = [{"prompt": i.prompt, "target": t, "answer": a, "exact": e}
               for i, t, a, e in zip(instances, targets, answers, exact)]
    return {"exact_match": 100.0 * float(np.mean(exact)), "answer_accuracy": 100.0 * float(np.mean(final))}, samples


class ExactMatchHook:
    """Held-out exact match before training (a fresh start) and after it."""

    def __init__(self, cfg: SFTConfig, instances: list, batch_size: int):
        self.cfg, self.instances, self.batch_size = cfg, instances, batch_size
        self.samples: list[dict] = []

    def _scores(self, trainer, params):
        return answer_scores(trainer, params, self.instances, self.cfg.max_new_tokens, self.batch_size)

    def start(self, trainer, state, resumed: bool) -> dict:
        before = None
        if not resumed:
            before, _ = self._scores(trainer, state.params)
            print(f"before fine-tuning: {_fmt(before)}", flush=True)
        return _before(trainer.workdir, before)

    def end(self, trainer, state) -> dict:
        after, self.samples = self._scores(trainer, state.params)
        print(f"after fine-tuning: {_fmt(after)}", flush=True)
        return {f"sft/after/{k}": v for k, v in after.items()}


# ----------------------------------------------------------------------------- start

def base_run(init_from: str, trainer: Trainer) -> Run:
    """The pretrained run in ``init_from`` on ``trainer``'s mesh, after checking that its model
    is ``trainer``'s without PEFT."""
    devices = list(trainer.mesh.devices.flat)
    base = Run.from_workdir(init_from, use_time={"mesh": trainer.config.mesh}, devices=devices)
    check_base_model(base.exp.model, trainer.exp.model, f"config.init_from={init_from!r}")
    return base


def check_base_model(have, wanted, where: str) -> None:
    """``have`` (a pretrained model) must be ``wanted`` (the base of the fine-tuned one: PEFT is
    not part of a ModelConfig)."""
    differ = [f"{f.name}: {getattr(have, f.name)!r} there, {getattr(wanted, f.name)!r} here"
              for f in dataclasses.fields(wanted) if getattr(have, f.name) != getattr(wanted, f.name)]
    if differ:
        raise ConfigError(f"{where} holds a different model ({'; '.join(differ)}); "
                          f"make config.model match the pretrained run")


def initial_params(trainer: Trainer, init_from: str) -> dict:
    """Fresh parameters whose base part is the pretrained one, all sharded on the mesh (the PEFT
    parameters keep their initial values; a soft prompt starts from the pretrained embeddings)."""
    from lm.peft.params import with_base
    from lm.peft.prompt import initialize_soft_prompt

    model_cfg, peft = trainer.exp.model, trainer.exp.peft
    base, step = base_run(init_from, trainer).restore()
    log.info("starting from step %d of %s", step, init_from)
    if not peft.adds_parameters:
        return base
    params = with_base(trainer.init_params(), base, model_cfg, peft)
    if peft.method == "prompt":  # from the pretrained embeddings, not the fresh ones
        params = initialize_soft_prompt(params, model_cfg, peft, trainer.vocab.encode, trainer.exp.seed)
    return jax.device_put(params, trainer.param_shardings)


def ensure_pretrained(cfg: SFTConfig, init_from: str, devices=None) -> None:
    """Pretrains ``cfg.pretrain_config`` into ``init_from`` when it holds no checkpoint."""
    if pretrained(init_from):
        return
    from lm.train.loop import pretrain

    base = pretrain_config(cfg, init_from)
    print(f"config.init_from={init_from!r} holds no checkpoint: pretraining it first with "
          f"{cfg.pretrain_config} ({base.train.steps} steps), then fine-tuning. To start from "
          f"another run, set --config.init_from=<its workdir>; to refuse instead, set "
          f"--config.sft.pretrain_config=''.", flush=True)
    pretrain(base, init_from, devices)


def pretrained(init_from: str) -> bool:
    checkpoints = os.path.join(init_from, "checkpoints")
    return os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))


def pretrain_config(cfg: SFTConfig, init_from: str):
    if not cfg.pretrain_config:
        raise CheckpointError(f"config.init_from={init_from!r} holds no checkpoint: pretrain there first, "
                              f"or set config.sft.pretrain_config to an experiment file to train it")
    from lm.configlib import call_file_function
    return call_file_function(cfg.pretrain_config, "get_config", "config.sft.pretrain_config")


# ----------------------------------------------------------------------------- run

def sft(config, workdir: str, devices=None) -> dict:
    """Fine-tunes ``config`` in ``workdir`` (resuming from its own checkpoint if it has one)."""
    from lm.instruct.rows import batches, instruction_rows

    cfg = validate_sft(config)
    init_from = config.init_from
    trainer = Trainer(config, workdir, devices)
    ensure_pretrained(cfg, init_from, devices)
    exp, vocab = trainer.exp, trainer.vocab
    train_arrays, train_report = instruction_rows(mixture_instances(cfg, exp.seed), vocab, exp.data.seq_len,
                                                  pack=cfg.pack, on_overflow=cfg.on_overflow)
    held_out = held_out_instances(cfg, exp.seed)
    eval_arrays, _ = instruction_rows(held_out, vocab, exp.data.seq_len, on_overflow=cfg.on_overflow)
    log.info("instruction rows: %s", train_report)
    if len(train_arrays["inputs"]) < exp.data.batch_size:
        raise ConfigError(f"{len(train_arrays['inputs'])} instruction rows are fewer than config.data.batch_size="
                          f"{exp.data.batch_size}: raise config.sft.train_instances")
    train_iter = batches(train_arrays, exp.data.batch_size, exp.seed, jax.process_index(), jax.process_count())
    exact_match = ExactMatchHook(cfg, held_out, exp.data.batch_size)
    start = time.perf_counter()
    final, state = fit(trainer, lambda: trainer.state_from_params(initial_params(trainer, init_from)),
                       train_iter, {"": eval_row_batches(eval_arrays, exp.data.batch_size)}, [exact_match])
    result = {**last_logged(workdir), **final, "sft/train_seconds": time.perf_counter() - start,
              **_row_counts(train_report), **trainer.peft_summary()}
    if jax.process_index() == 0:
        _write_results(workdir, trainer, state, result, exact_match.samples)
    return result


def _fmt(scores: dict) -> str:
    return "  ".join(f"{k} {v:.1f}%" for k, v in scores.items())


def _row_counts(report) -> dict:
    return {f"sft/rows/{k}": v for k, v in dataclasses.asdict(report).items() if isinstance(v, int)}


def _before(workdir: str, before: Optional[dict]) -> dict:
    """The 'before' scores: measured now, or read back from the first (interrupted) attempt."""
    path = os.path.join(workdir, "sft_before.json")
    if before is not None:
        write_atomically(path, json.dumps(before))
    elif os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
    return {f"sft/before/{k}": v for k, v in (before or {}).items()}


def _write_results(workdir: str, trainer, state, result: dict, samples: list[dict]) -> None:
    write_atomically(os.path.join(workdir, "sft_result.json"), json.dumps(result, indent=2, sort_keys=True) + "\n")
    write_atomically(os.path.join(workdir, "sft_answers.jsonl"), "".join(json.dumps(s) + "\n" for s in samples))
    if trainer.exp.peft.method not in ("none", "full"):
        from lm.peft.params import save_adapter

        save_adapter(os.path.join(workdir, "adapter"), state.params, trainer.exp.model, trainer.exp.peft)


# ----------------------------------------------------------------------------- sweeps

def run_sft(config, workdir: str, devices=None) -> dict:
    """The sweep runner: fine-tunes (or reads back a finished run) and adds the step time."""
    result = sft(config, workdir, devices)
    tokens_per_step = config.data.batch_size * config.data.seq_len
    if result.get("train/tokens_per_sec"):
        result["sft/step_ms"] = 1000.0 * tokens_per_step / result["train/tokens_per_sec"]
    return result


def validate_sft(config) -> SFTConfig:
    """Every section SFT reads, and the model it starts from (the saved one in config.init_from,
    or the experiment that will be pretrained there), checked before anything trains."""
    from lm.train.experiment import Experiment
    from lm.train.saved import read_config

    exp = Experiment.from_config(config)
    cfg = sft_config(config)
    init_from = config.get("init_from") or ""
    if not init_from:
        raise ConfigError("config.mode='sft' needs config.init_from=<workdir of a pretrained run>")
    base = read_config(init_from) if pretrained(init_from) else pretrain_config(cfg, init_from)
    check_base_model(Experiment.from_config(base).model, exp.model, f"config.init_from={init_from!r}")
    return cfg
