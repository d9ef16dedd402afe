"""lm-evaluation-harness model "lm": a trained ``lm`` run, evaluated on any lm_eval task.

    python -m lm.eval.harness run --model lm --tasks hellaswag --output_path results/ \
        --model_args workdir=RUN[,step=N][,batch_size=B][,seed=S]

The lm_eval executable only knows the models listed inside its own package (lm_eval/models/
__init__.py; its registry reads no entry points), so this module registers the adapter and then
runs lm_eval's own command line, unchanged: every lm_eval flag works. In Python, importing this
module is enough: ``lm_eval.simple_evaluate(model="lm", model_args="workdir=RUN", ...)``.

The requests are answered by ``lm.eval.scoring.ModelScorer``; this module adds the model
arguments, a progress bar and lm_eval's partial-results cache hook. It is the only module of
``lm`` that imports lm_eval.

Where results go: lm_eval writes into ``<output_path>/<model name>/``, the model name being read
from model_args keys such as ``pretrained=``, and a random one otherwise. For this model the
folder is ``<workdir's folder name>_step<N>`` (``results_folder_name``), N being the evaluated
checkpoint, so ``--model_args workdir=runs/demo`` at step 2000 writes
``<output_path>/demo_step2000/results_<date>.json``. The results' ``device`` is what JAX runs
on (``device_summary``, e.g. ``cpu:0``), not lm_eval's ``--device`` default (``cuda:0``),
which this model does not use.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

import jax
import lm_eval.models  # noqa: F401  (lm_eval's own models stay registered next to "lm")
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
from lm_eval.utils import simple_parse_args_string
from tqdm import tqdm

from lm.configlib import ConfigError
from lm.data.vocab import unknown_characters
from lm.eval.harness_args import (  # noqa: F401  (ModelArgsError and the rest stay importable here)
    LATEST_STEP_WORDS, MODEL_ARGS, MODEL_ARGS_FORM, MODEL_NAME, ModelArgsError, check_trained_workdir,
    checkpoint_step, command_line_model_args, integer_argument, latest_checkpoint_step,
    model_arguments)
from lm.eval.trained import scorer_from_workdir
from lm.train.checkpoint import CheckpointError

DEFAULT_BATCH_SIZE = 16
HARNESS_DEFAULT_BATCH_SIZE = 1  # what lm_eval's --batch_size is when not given

logger = logging.getLogger(__name__)


@register_model(MODEL_NAME)
class HarnessModel(LM):
    """A trained ``lm`` workdir as an lm_eval model: its checkpoint at ``step`` (default: the
    latest), scoring ``batch_size`` rows per call, sampling (if a task asks) from ``seed``."""

    def __init__(self, workdir: str, step: Optional[int] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0):
        super().__init__()
        check_trained_workdir(workdir)
        self.workdir = workdir
        self.batch_size = batch_size
        self.scorer = scorer_from_workdir(workdir, step=step, batch_size=batch_size, seed=seed)

    @classmethod
    def create_from_arg_string(cls, arg_string: str,
                               additional_config: Optional[dict] = None) -> "HarnessModel":
        """``workdir=RUN,step=N,batch_size=B,seed=S`` as lm_eval's --model_args gives it."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict,
                            additional_config: Optional[dict] = None) -> "HarnessModel":
        """The model from parsed --model_args. lm_eval also passes its own --batch_size,
        --max_batch_size and --device here (always, defaults included), so they are read apart
        from the model arguments instead of being keyword arguments that could collide."""
        arguments = model_arguments(arg_dict)
        if "batch_size" not in arguments:
            arguments["batch_size"] = harness_batch_size(additional_config or {})
        return cls(**arguments)

    # ------------------------------------------------------------------------- requests

    def loglikelihood(self, requests: Sequence,
                      disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives the continuation)."""
        return self._answer("loglikelihood", requests, disable_tqdm)

    def loglikelihood_rolling(self, requests: Sequence, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole document."""
        return self._answer("loglikelihood_rolling", requests, disable_tqdm)

    def generate_until(self, requests: Sequence, disable_tqdm: bool = False) -> list[str]:
        """The continuation of each context, cut before the first stop string."""
        return self._answer("generate_until", requests, disable_tqdm)

    def _answer(self, request_type: str, requests: Sequence, disable_tqdm: bool) -> list:
        """Answers the requests a batch at a time, so the progress bar moves during a long
        evaluation. Requests go longest first (a too-large batch fails at once, not at the end)
        and grouped by generation settings, so that each call to the scorer fills its batches;
        each answer also goes to lm_eval's cache hook (``--use_cache``)."""
        answer_batch: Callable[[list], list] = getattr(self.scorer, request_type)
        warn_unknown_characters(self.scorer.vocab, request_type, requests)
        order = sorted(range(len(requests)), key=lambda index: batching_key(requests[index]))
        answers: list[Any] = [None] * len(requests)
        with tqdm(total=len(requests), desc=f"lm {request_type}",
                  disable=disable_tqdm or self.rank != 0) as progress:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                for index, answer in zip(chunk, answer_batch([requests[i] for i in chunk])):
                    answers[index] = answer
                    self.cache_hook.add_partial(request_type, request_arguments(requests[index]),
                                                answer)
                progress.update(len(chunk))
        return answers

    # ------------------------------------------------------------------------- lm_eval metadata

    def get_model_info(self) -> dict:
        """What lm_eval records in the results' config: which checkpoint was evaluated, and on
        which JAX backend and devices."""
        scorer = self.scorer
        devices = parameter_devices(scorer.params)
        return {"model_workdir": self.workdir, "model_step": scorer.step, "model_arch": scorer.arch,
                "model_context_len": scorer.window, "model_batch_size": self.batch_size,
                "model_num_parameters": sum(int(x.size) for x in jax.tree.leaves(scorer.params)),
                "model_jax_backend": jax.default_backend(),
                "model_devices": [device_name(device) for device in devices]}


# ----------------------------------------------------------------------------- devices


def device_name(device) -> str:
    """'cpu:0', 'gpu:1', 'tpu:3': the platform and id of a JAX device."""
    return f"{device.platform}:{device.id}"


def device_summary(devices: Sequence) -> str:
    """What the results' ``device`` says: 'cpu:0' for one device, 'tpu:0-7 (8 devices)' or
    'gpu:0,2 (2 devices)' for several."""
    names = sorted({device.platform for device in devices})
    ids = sorted(device.id for device in devices)
    if len(ids) == 1:
        return f"{names[0]}:{ids[0]}"
    contiguous = ids == list(range(ids[0], ids[0] + len(ids)))
    listed = f"{ids[0]}-{ids[-1]}" if contiguous else ",".join(map(str, ids))
    return f"{'+'.join(names)}:{listed} ({len(ids)} devices)"


def parameter_devices(params) -> list:
    """Every device holding a part of ``params``, by id."""
    found = {device for leaf in jax.tree.leaves(params) for device in leaf.devices()}
    return sorted(found, key=lambda device: device.id)


def with_jax_device(argv: Sequence[str], devices: Sequence) -> list[str]:
    """lm_eval's command line for ``--model lm`` with ``--device`` saying what JAX runs on.
    lm_eval records --device in the results (its default is 'cuda:0', even on a CPU) but this
    model never reads it."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--device":
            skip = True
        elif not argument.startswith("--device="):
            kept.append(argument)
    if len(kept) != len(argv):
        logger.warning("--device is not used by --model %s: JAX runs it on %s", MODEL_NAME,
                       device_summary(devices))
    return kept + ["--device", device_summary(devices)]


def model_from_argv(argv: Sequence[str]) -> str:
    """The --model (-M) of lm_eval's command line; 'hf', lm_eval's default, when not given."""
    model = "hf"
    for index, argument in enumerate(argv):
        if argument in ("--model", "-M") and index + 1 < len(argv):
            model = argv[index + 1]
        elif argument.startswith("--model="):
            model = argument.split("=", 1)[1]
    return model


# ----------------------------------------------------------------------------- results folder


def results_folder_name(workdir: str, step: Optional[int]) -> str:
    """'<workdir's folder name>_step<N>' (e.g. 'demo_step2000'), or '<name>_latest' where no
    checkpoint is found; characters a folder name should not have become '_'."""
    name = os.path.basename(os.path.normpath(workdir)) or "workdir"
    suffix = f"step{step}" if step is not None else "latest"
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", f"{name}_{suffix}")


def results_model_name(model_args) -> Optional[str]:
    """The results folder for model_args (a string or lm_eval's parsed dict) of this model;
    None for other models' arguments, which have no ``workdir``."""
    arguments = simple_parse_args_string(model_args) if isinstance(model_args, str) else model_args
    if not isinstance(arguments, dict) or "workdir" not in arguments:
        return None
    try:
        parsed = model_arguments(arguments)
    except ValueError:
        return None
    step = parsed.get("step")
    return results_folder_name(parsed["workdir"], step if step is not None
                               else latest_checkpoint_step(parsed["workdir"]))


def _name_results_after_the_checkpoint() -> None:
    """lm_eval names the results folder after model_args' ``pretrained=`` (and a few other
    keys), else randomly; this model's arguments name it after the workdir and step."""
    original = getattr(GeneralConfigTracker, "_get_model_name", None)
    if original is None:  # another lm_eval version: its own names stay
        return

    def model_name(model_args):
        return results_model_name(model_args) or original(model_args)

    GeneralConfigTracker._get_model_name = staticmethod(model_name)


_name_results_after_the_checkpoint()


def check_command_line(argv: Sequence[str]) -> None:
    """--model_args of --model lm checked before lm_eval starts, so that a mistake is one line."""
    if model_from_argv(argv) != MODEL_NAME:
        return
    arguments = model_arguments(command_line_model_args(argv))
    check_trained_workdir(arguments["workdir"])


def warn_unknown_characters(vocab, request_type: str, requests: Sequence) -> None:
    """One warning naming the characters of the requests' texts that the vocabulary encodes as
    UNK (a character-level vocabulary lacks most characters a benchmark was not written in)."""
    texts = [argument for request in requests for argument in request_arguments(request)
             if isinstance(argument, str)]
    unknown = unknown_characters(vocab, "".join(texts))
    if unknown:
        logger.warning("%s requests: characters not in the vocabulary, encoded as <unk>: %s",
                       request_type, ", ".join(map(repr, unknown)))


def harness_batch_size(harness_config: dict) -> int:
    """The batch size when model_args has none: lm_eval's --batch_size if it is an integer other
    than lm_eval's default of 1 (which would score one row per call), else DEFAULT_BATCH_SIZE.
    --batch_size auto is not supported (the scorer does not probe memory)."""
    value = harness_config.get("batch_size")
    if value is None:
        return DEFAULT_BATCH_SIZE
    try:
        number = int(str(value))
    except ValueError:
        logger.warning("--batch_size %r is not supported by --model %s; scoring %d rows per call "
                       "(set model_args batch_size=B)", value, MODEL_NAME, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    if number == HARNESS_DEFAULT_BATCH_SIZE or number < 1:
        return DEFAULT_BATCH_SIZE
    return number


def request_arguments(request) -> tuple:
    """A request's arguments: an lm_eval Instance's ``args``, or the tuple (or lone document
    string) that ModelScorer also accepts."""
    if hasattr(request, "args"):
        return tuple(request.args)
    return (request,) if isinstance(request, str) else tuple(request)


def batching_key(request) -> tuple[str, int]:
    """Sorts requests into batches that suit the scorer: generation requests with the same
    settings together (the scorer batches only those), then longest text first."""
    arguments = request_arguments(request)
    texts = [argument for argument in arguments if isinstance(argument, str)]
    settings = [argument for argument in arguments if not isinstance(argument, str)]
    return json.dumps(settings, sort_keys=True, default=str), -sum(len(text) for text in texts)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """lm_eval's own command line (``lm_eval.__main__.cli_evaluate``) with "lm" registered and,
    for it, the device JAX uses recorded as the results' ``device``. Wrong --model_args for
    "lm" (or a workdir without a trained run) exit with code 2 in one line before lm_eval starts."""
    from lm_eval.__main__ import cli_evaluate

    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        check_command_line(arguments)
        if model_from_argv(arguments) == MODEL_NAME:  # lm_eval's own models do use --device
            arguments = with_jax_device(arguments, jax.devices())
        sys.argv = [sys.argv[0], *arguments]
        cli_evaluate()
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
