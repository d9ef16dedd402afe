"""The scorer of a trained run: ``ModelScorer`` over a workdir's checkpoint, on its mesh.

This sits above both ``lm.eval.scoring`` (the model side of the requests) and ``lm.train.run``
(whose ``Run.scorer`` builds a ``ModelScorer`` for parameters it holds), so that neither of those
two imports the other back.
"""
from __future__ import annotations

from typing import Optional

from lm.eval.scoring import ModelScorer, check_scoring_arch
from lm.train.run import Run


def scorer_from_workdir(workdir: str, step: Optional[int] = None, devices=None,
                        batch_size: int = 16, seed: int = 0) -> ModelScorer:
    """The checkpoint at ``step`` (default: the latest) of ``workdir``, rebuilt from the
    workdir's config.json with its parameters sharded on the saved mesh (or, when that does
    not fit ``devices``, data parallel over them)."""
    run = Run.from_workdir(workdir, devices=devices)
    check_scoring_arch(run.exp.model.arch)
    params, step = run.restore(step)
    return run.scorer(params, batch_size, seed, step)
