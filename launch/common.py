"""Shared launcher plumbing: top-level config checks, logging, and user-facing error reporting."""
from __future__ import annotations

import logging
import sys

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


def main_with_clear_errors(fn) -> None:
    """Runs ``fn``; configuration and input errors print one clear line instead of a traceback."""
    from lm.data.corpus import CorpusError
    from lm.train.checkpoint import CheckpointError
    from lm.train.lock import WorkdirInUse
    try:
        fn()
    except (ConfigError, CheckpointError, CorpusError, WorkdirInUse) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:
        if not _raised_in_ml_collections(e):
            raise
        # An override such as --config.train.stpes=5 names a key the experiment does not have.
        message = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
        print(f"error: unknown config key in a --config.<key> override: {message}", file=sys.stderr)
        sys.exit(2)


def _raised_in_ml_collections(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None:
        if "ml_collections" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False
