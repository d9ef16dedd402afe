"""The model arguments of lm-evaluation-harness's model "lm" (``--model_args workdir=RUN,...``):
parsed as lm_eval passes them, checked by name before lm_eval starts, so that a mistake is one
line naming the argument and the fix. No lm_eval import: ``lm.eval.harness`` registers the model.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Any, Optional, Sequence

from lm.configlib import ConfigError

MODEL_NAME = "lm"
MODEL_ARGS = ("workdir", "step", "batch_size", "seed")
MODEL_ARGS_FORM = "workdir=RUN[,step=N][,batch_size=B][,seed=S]"
LATEST_STEP_WORDS = ("", "none", "latest")


class ModelArgsError(ConfigError):
    """--model_args of --model lm are wrong; the message names the argument and the fix, and
    stands alone (lm_eval may show it with no other context)."""


def latest_checkpoint_step(workdir: str) -> Optional[int]:
    """The newest complete checkpoint of a training ``workdir`` (None when it has none)."""
    from lm.train.run import latest_step
    return latest_step(os.path.join(workdir, "checkpoints"))


def model_arguments(arg_dict: dict) -> dict:
    """The constructor's keyword arguments from --model_args, whose values may be strings or what
    lm_eval's parser guessed (int, float, bool, None); refuses unknown or missing ones by name."""
    unknown = sorted(set(arg_dict) - set(MODEL_ARGS))
    if unknown:
        raise ModelArgsError(f"unknown model_args {unknown} for --model {MODEL_NAME}"
                             f"{_close_matches(unknown)}; expected {MODEL_ARGS_FORM}")
    workdir = arg_dict.get("workdir")
    if workdir is None or str(workdir).strip() == "":
        raise ModelArgsError(f"--model {MODEL_NAME} needs model_args workdir=RUN: the training "
                             f"workdir (its config.json and checkpoints/); expected {MODEL_ARGS_FORM}")
    arguments: dict[str, Any] = {"workdir": str(workdir)}
    if "step" in arg_dict:
        arguments["step"] = checkpoint_step(arg_dict["step"])
    if "batch_size" in arg_dict:
        arguments["batch_size"] = integer_argument("batch_size", arg_dict["batch_size"], minimum=1)
    if "seed" in arg_dict:
        arguments["seed"] = integer_argument("seed", arg_dict["seed"])
    return arguments


def _close_matches(names: Sequence[str]) -> str:
    """' (did you mean 'step'?)' for misspelt model_args."""
    hints = [f"{name!r}: did you mean {close[0]!r}?" for name in names
             if (close := difflib.get_close_matches(name, MODEL_ARGS, n=1, cutoff=0.6))]
    return f" ({'; '.join(hints)})" if hints else ""


def check_trained_workdir(workdir: str) -> None:
    """Refuses a model_args workdir that no training run wrote, naming the argument."""
    if not os.path.isdir(workdir):
        missing = "there is no such folder"
    elif not os.path.isfile(os.path.join(workdir, "config.json")):
        missing = "it has no config.json"
    elif latest_checkpoint_step(workdir) is None:
        missing = "it has no checkpoint yet"
    else:
        return
    raise ModelArgsError(f"model_args workdir={workdir} (--model {MODEL_NAME}): {workdir} is not a "
                         f"training workdir ({missing}); give the workdir of a training run "
                         "(python -m launch.main ... --workdir=RUN)")


def command_line_model_args(argv: Sequence[str]) -> dict:
    """--model_args of an lm_eval command line as lm_eval reads them: 'k=v,k2=v2' or 'k=v k2=v2'
    (or one JSON object), values as strings; a piece without '=' is refused by name."""
    values, index = [], 0
    while index < len(argv):
        argument = argv[index]
        if argument.startswith("--model_args="):
            values.append(argument.split("=", 1)[1])
        elif argument in ("--model_args", "-a"):
            while index + 1 < len(argv) and not argv[index + 1].startswith("-"):
                index += 1
                values.append(argv[index])
        index += 1
    if values and values[0].lstrip().startswith("{"):
        try:
            parsed = json.loads(values[0])
        except json.JSONDecodeError as e:
            raise ModelArgsError(f"--model_args {values[0]!r} is not a JSON object ({e}); give "
                                 f"--model_args {MODEL_ARGS_FORM}") from None
        if isinstance(parsed, dict):
            return parsed
    arguments = {}
    for piece in (piece for value in values for piece in value.split(",") if piece.strip()):
        key, equals, value = piece.partition("=")
        if not equals or not key.strip():
            raise ModelArgsError(f"--model_args piece {piece!r} is not key=value; give --model_args "
                                 f"{MODEL_ARGS_FORM}")
        arguments[key.strip()] = value
    return arguments


def checkpoint_step(value) -> Optional[int]:
    """A step number, or None (the latest checkpoint) for an empty value, 'none' or 'latest'."""
    if value is None or str(value).strip().lower() in LATEST_STEP_WORDS:
        return None
    return integer_argument("step", value, minimum=0)


def integer_argument(name: str, value, minimum: Optional[int] = None) -> int:
    """``value`` as an int: lm_eval passes model_args as strings or as guessed types."""
    number = None
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            number = int(str(value).strip())
        except ValueError:
            pass
    if number is None or (minimum is not None and number < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ModelArgsError(f"model_args {name}={value!r} is not an integer{bound} (--model "
                             f"{MODEL_NAME}; expected {MODEL_ARGS_FORM})")
    return number
