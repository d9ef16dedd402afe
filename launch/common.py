"""Shared launcher plumbing: top-level config checks, logging, and user-facing error reporting."""
from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import sys
from typing import Optional, Sequence

from lm import fileio
from lm.configlib import ConfigError


def validate_top_level(config) -> None:
    """Known top-level keys and a known mode (the launchers that do not run the mode itself)."""
    from lm.modes import mode
    from lm.sections import check_top_level
    check_top_level(config)
    mode(config.get("mode"))


def accepted(fn, options: dict) -> dict:
    """The ``options`` that ``fn`` takes as keyword arguments."""
    import inspect
    parameters = inspect.signature(fn).parameters
    return {key: value for key, value in options.items() if key in parameters}


def setup_logging() -> None:
    """Log levels only: the workdir is made by what writes to it (training, an eval report), so
    a rejected config or a sample of a missing run leaves no empty folder behind."""
    logging.getLogger("lm").setLevel(logging.INFO)
    # Orbax and absl are chatty at INFO; the progress bar and metrics tell the story.
    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_app(main, output_flag: str = "--workdir") -> None:
    """``app.run(main)`` for a launcher with an experiment file flag: the --config file is
    checked first (a missing file, a syntax error, no get_config, an unknown variant), then
    ``main_with_clear_errors`` reports mistakes in one line."""
    from absl import app

    def checked() -> None:
        spec = config_argument(sys.argv[1:])
        if spec is not None:
            load_config_file(spec, "get_config")
        app.run(main)
    main_with_clear_errors(checked, output_flag)


def main_with_clear_errors(fn, output_flag: str = "--workdir") -> None:
    """Runs ``fn``; configuration and input errors, a run that stopped on its own, and a place
    that cannot be written (a read-only or full disk, a file where ``output_flag``'s folder
    should be) print one clear line instead of a traceback, and exit with code 2."""
    from lm.data.corpus import CorpusError
    from lm.train.checkpoint import CheckpointError
    from lm.train.errors import RunStopped
    from lm.train.lock import WorkdirInUse
    clear = (ConfigError, CheckpointError, CorpusError, WorkdirInUse, RunStopped)
    try:
        fn()
    except clear as e:
        _exit_with(str(e))
    except OSError as e:
        failure = fileio.write_failure(e, output_flag)
        if failure is None:
            raise
        # Clean-up after a clear error (closing logs on a full disk) can fail to write in turn:
        # the first error says why the run stopped.
        first = _earlier_error(e, clear)
        _exit_with(failure if first is None else str(first))
    except (AttributeError, KeyError) as e:
        if not _raised_in_ml_collections(e):
            raise
        # An override such as --config.train.stpes=5 names a key the experiment does not have.
        message = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
        _exit_with(f"unknown config key in a --config.<key> override: {message}")


def _earlier_error(error: BaseException, kinds: tuple) -> Optional[BaseException]:
    """The error of ``kinds`` that was being handled when ``error`` was raised, if any."""
    context = error.__context__
    while context is not None and not isinstance(context, kinds):
        context = context.__context__
    return context


def _exit_with(message: str) -> None:
    print("error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()),
          file=sys.stderr, flush=True)
    # Background writes that failed for the same reason (an async checkpoint on the full disk)
    # would otherwise add asyncio's 'Future exception was never retrieved' tracebacks at exit.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.exit(2)


def check_writable(path: str, flag: str, folder: bool = True) -> None:
    """Refuses, before any work, a ``flag`` value where nothing can be written (a read-only
    folder or file system, a file in the way); creates nothing."""
    reason = fileio.unwritable_reason(path, folder=folder)
    if reason is not None:
        kind = "a folder" if folder else "a file"
        raise ConfigError(f"cannot write {flag}={path}: {reason}; point {flag} at {kind} you "
                          "can write to")


# ----------------------------------------------------------------------------- experiment files


def config_argument(argv: Sequence[str]) -> Optional[str]:
    """The value of --config in absl's ``--config=X`` or ``--config X`` form (the last one
    given; nothing after a bare ``--``)."""
    value = None
    for index, argument in enumerate(argv):
        if argument == "--":
            break
        name, equals, rest = argument.lstrip("-").partition("=")
        if not argument.startswith("-") or name != "config":
            continue
        if equals:
            value = rest
        elif index + 1 < len(argv):
            value = argv[index + 1]
    return value


def load_config_file(spec: str, function: str, flag: str = "--config"):
    """What ``function`` of the Python file ``path`` in ``spec`` ('path[:variant]') returns,
    called with the variant as ml_collections calls it (no argument without a colon). A missing
    file, a syntax error, no ``function`` or a variant it refuses (ValueError) is a ConfigError
    naming the file."""
    path, colon, variant = spec.partition(":")
    where = f"{flag}={spec}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no file {path}{_similar_files(path)}")
    module_spec = importlib.util.spec_from_file_location("experiment_file", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{where}: {path} line {e.lineno}: {e.msg}; fix the file") from None
    if not callable(getattr(module, function, None)):
        raise ConfigError(f"{where}: {path} defines no {function}(variant), which the launcher "
                          "calls for the config; pass an experiment file")
    try:
        return getattr(module, function)(*([variant] if colon else []))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _similar_files(path: str) -> str:
    """'; did you mean <the closest name>?', else the Python files beside ``path``."""
    folder = os.path.dirname(path) or "."
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".py")
                       and not name.startswith("_"))
    except OSError:
        return f" (no folder {folder})"
    close = difflib.get_close_matches(os.path.basename(path), names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {os.path.join(os.path.dirname(path), close[0])}?"
    if names:
        return f"; {folder} has {', '.join(names)}"
    return f" (and no .py files in {folder})"


def _raised_in_ml_collections(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None:
        if "ml_collections" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False
