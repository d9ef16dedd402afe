"""``config.mode='eval'``: validation loss, then the tasks of ``config.eval`` through seqio.Evaluator.

    python -m launch.main --config=experiments/shakespeare_char.py --workdir=runs/demo \\
        --config.mode=eval --config.eval.tasks=heldout_docs,next_line_choice,humaneval

One ``seqio.Evaluator`` per task (``lm.eval.seqio_suite``) calls back into the model through a
score function (log-likelihoods: rolling documents, choices) or a predict function (generation:
greedy or sampled continuations), both answered by ``ModelScorer`` on token ids. Results go to
``<workdir>/eval/step<N>.json`` and ``step<N>.md`` (a Markdown table), and every example with its
score or prediction to ``step<N>_samples/<task>.jsonl``. A workdir where these cannot be written
is refused before anything is computed.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from lm.configlib import ConfigError
from lm.eval import report
from lm.eval.scoring import ModelScorer
from lm.eval.tasks import EvalConfig, EvalTask, build_tasks
from lm.fileio import unwritable_reason, write_atomically
from lm.infer.decode import DecodeSettings, truncate_at_stop

log = logging.getLogger("lm.eval")
_CHUNK_BATCHES = 4  # batches per progress-bar update


def eval_config(config) -> EvalConfig:
    return EvalConfig.from_config(config.get("eval"))


def evaluate_workdir(config, workdir: str, step: Optional[int] = None, devices=None,
                     overrides: Optional[dict] = None) -> dict:
    """Validation loss of the checkpoint, plus every task of ``config.eval.tasks``, with the
    parameters sharded on ``config``'s mesh; the model and data come from the workdir's
    config.json (``overrides``: dotted keys changed on top, e.g. from the command line). Returns
    the flat scores ('<task>/<metric>') and writes the report files, whose folder is checked
    before anything is computed."""
    from lm.train.run import Run

    cfg = eval_config(config)
    run = Run.from_workdir(workdir, overrides, use_time=config, devices=devices)
    writes = jax.process_index() == 0
    if writes:
        check_report_writable(workdir)
    params, step = run.restore(step)
    validation = {"step": step, **run.evaluate(params)}
    tasks, results, samples = (_run_eval_tasks(run, cfg, params, step) if cfg.task_names
                               else ([], {}, {}))
    scores = {**validation, **flat_scores(results)}
    if writes:
        _write_results(workdir, validation, scores, tasks, results, samples)
    return scores


def flat_scores(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """'<task>/<metric>' -> value."""
    return {f"{task_name}/{metric}": value for task_name, metrics in results.items()
            for metric, value in metrics.items()}


def check_report_writable(workdir: str) -> None:
    """Refuses, before any scoring, a workdir where the report cannot be written (a read-only
    copy of a run, a file named 'eval' in the way)."""
    for folder in (workdir, os.path.join(workdir, "eval")):
        reason = unwritable_reason(folder)
        if reason is None:
            continue
        in_the_way = os.path.lexists(folder) and not os.path.isdir(folder)
        fix = (f"move {folder} out of the way" if in_the_way else "evaluate a copy of the run "
               "(its config.json and checkpoints/) in a folder you can write to")
        raise ConfigError(f"cannot write the evaluation report in {folder}: {reason}; {fix}")


def _write_results(workdir: str, validation: dict, scores: dict, tasks, results, samples) -> None:
    """The report (with tasks) and eval_step<N>.json; when writing fails (a disk filled up
    during the evaluation) the scores go to stdout first, so that the computation is not lost."""
    step = validation["step"]
    try:
        if tasks:
            report.write(os.path.join(workdir, "eval"), step, validation, tasks, results, samples)
        write_atomically(os.path.join(workdir, f"eval_step{step}.json"), json.dumps(scores, indent=2) + "\n")
    except OSError:
        print(f"scores (not written): {json.dumps(scores)}", flush=True)
        raise


def _run_eval_tasks(run, cfg: EvalConfig, params, step: int):
    """Runs the tasks (every process: the model is sharded): the tasks, their metrics and
    their examples with the model's answers."""
    from lm.data import corpus as corpus_lib
    from lm.data import pipeline as data_lib

    exp = run.exp

    def heldout_text() -> str:
        if exp.data.backend == "synthetic":
            raise ConfigError("config.data.backend='synthetic' has no held-out text for the built-in "
                              "tasks; evaluate '<kind>:<file.jsonl>' tasks instead")
        return "\n".join(corpus_lib.split_text(corpus, "validation", exp.data.train_fraction)
                         for corpus in data_lib.vocab_corpora(exp.data))

    tasks = build_tasks(cfg, heldout_text)
    scorer = run.scorer(params, cfg.batch_size, int(run.config.seed), step)
    results, samples = run_tasks(scorer, tasks, progress=exp.train.progress and jax.process_index() == 0)
    return tasks, results, samples


def run_tasks(scorer: ModelScorer, tasks: list[EvalTask], progress: bool = True
              ) -> tuple[dict[str, dict[str, float]], dict[str, list[dict]]]:
    """Metrics of each task, and each task's examples with the model's answers."""
    import seqio

    from lm.eval import seqio_suite

    results, samples = {}, {}
    for task in tasks:
        start = time.time()
        name = seqio_suite.register(task, scorer.vocab)
        evaluator = seqio.Evaluator(name, seqio_suite.TokenPairConverter(), eval_split=seqio_suite.SPLIT,
                                    async_compute_metrics=False)
        answers = ModelAnswers(scorer, task, progress)
        metrics, _ = evaluator.evaluate(compute_metrics=True, score_fn=answers.score,
                                        predict_fn=answers.predict)
        results[task.name] = {key: float(value) for key, value in metrics.result()[name].items()}
        samples[task.name] = answers.samples
        log.info("eval task %s: %s (%.1f s)", task.name, results[task.name], time.time() - start)
    return results, samples


class ModelAnswers:
    """The Evaluator's model functions for one task: (index, score) or (index, new tokens) for
    each example of the feature-converted dataset, with the examples kept for the report."""

    def __init__(self, scorer: ModelScorer, task: EvalTask, progress: bool):
        self.scorer, self.task, self.progress = scorer, task, progress
        self.samples: list[dict] = []

    def _examples(self, dataset) -> list[tuple[int, list[int], list[int]]]:
        from lm.eval.seqio_suite import unpad

        return [(int(index), unpad(ex["context_tokens"]), unpad(ex["target_tokens"]))
                for index, ex in dataset.as_numpy_iterator()]

    def _in_chunks(self, items: list, answer: Callable[[list], list]) -> list:
        """``answer`` over ``items`` a few batches at a time, with a progress bar."""
        size = self.scorer.batch_size * _CHUNK_BATCHES
        out = []
        with tqdm(total=len(items), desc=self.task.name, unit="ex", disable=not self.progress,
                  leave=False) as bar:
            for start in range(0, len(items), size):
                out.extend(answer(items[start:start + size]))
                bar.update(min(size, len(items) - start))
        return out

    def score(self, dataset) -> list[tuple[int, float]]:
        examples = self._examples(dataset)
        if self.task.kind == "rolling":
            values = self._in_chunks([target for _, _, target in examples],
                                     self.scorer.loglikelihood_rolling_tokens)
        else:
            pairs = self._in_chunks([(context, target) for _, context, target in examples],
                                    self.scorer.loglikelihood_tokens)
            values = [loglik for loglik, _ in pairs]
        self._record(examples, "loglikelihood", values)
        return [(index, value) for (index, _, _), value in zip(examples, values)]

    def predict(self, dataset) -> list[tuple[int, list[int]]]:
        examples = self._examples(dataset)
        task = self.task
        settings = DecodeSettings(max_new_tokens=task.max_new_tokens, temperature=task.temperature,
                                  stop_tokens=(self.scorer.vocab.eos_id,), stop_strings=task.stop,
                                  seed=self.scorer.seed)
        tokens = self._in_chunks([context for _, context, _ in examples],
                                 lambda prompts: self.scorer.generate_tokens(prompts, settings))
        texts = [truncate_at_stop(self.scorer.vocab.decode(t), task.stop) for t in tokens]
        self._record(examples, "prediction", texts)
        # The Evaluator stacks the outputs into one array before decoding them (which stops at
        # EOS): rows padded with EOS to one length.
        width = max((len(t) for t in tokens), default=0) + 1
        eos = self.scorer.vocab.eos_id
        return [(index, t + [eos] * (width - len(t))) for (index, _, _), t in zip(examples, tokens)]

    def _record(self, examples, key: str, values) -> None:
        from lm.eval.seqio_suite import examples as flat_examples

        flat = flat_examples(self.task)
        self.samples = [{**flat[index], **self._row_id(flat[index]["row"]),
                         key: value.item() if isinstance(value, np.generic) else value}
                        for (index, _, _), value in zip(examples, values)]

    def _row_id(self, row: int) -> dict:
        task_id = self.task.rows[row].get("task_id")
        return {} if task_id is None else {"task_id": task_id}


def validate_eval(config) -> None:
    """The use-time sections evaluation reads (config.eval, config.mesh); the model and data are
    the workdir's, checked when it is loaded."""
    from lm.parallel import MeshConfig
    eval_config(config)
    MeshConfig.from_config(config.mesh)
