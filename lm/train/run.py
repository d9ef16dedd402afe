"""A run: one experiment's validated sections on its mesh, built from a config or loaded from a
workdir, and the one way to read a trained run's parameters.

    Run(config, workdir)            every section of the experiment checked, the mesh, the layout
                                    and the parameter shardings (nothing allocated)
    Run.from_workdir(path, ...)     the workdir's config.json (model, data, peft, ...) with the
                                    use-time sections (eval, sample, mesh, seed) of the command line
    run.restore(step=None)          parameters sharded on the mesh: no optimizer, no train step,
                                    no host round trip (orbax reads each shard where it lives)
    run.init_params()               fresh parameters, initialised directly into their shardings
    run.scorer(params)              lm.eval.scoring.ModelScorer on the mesh

Training builds on the same object (``lm.train.trainer.Trainer`` adds the optimizer and the
compiled steps), so evaluation, sampling, scoring, ``init_from``, Hugging Face export and sweeps
all read checkpoints through ``restore``.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp

from lm.parallel import make_mesh
from lm.parallel import sharding as shd
from lm.parallel.axes import axis_rules
from lm.parallel.rules import layout as named_layout
from lm.train import checksums, workdir as workdir_lib
from lm.train.checkpoint import CheckpointError
from lm.train.experiment import Experiment
from lm.train.state import abstract_model, param_count

log = logging.getLogger("lm.run")


class Run:
    """The validated experiment of ``config`` on its mesh, for ``workdir`` ('' for none)."""

    def __init__(self, config, workdir: str = "", devices=None):
        self.config = config
        self.workdir = workdir
        self.exp = exp = Experiment.from_config(config)
        self.mesh = make_mesh(exp.mesh, devices)
        self.layout = named_layout(exp.mesh.rules)
        self.batch_sharding = shd.batch_sharding(self.mesh, self.rules)
        # With PEFT's parameters and the mode's heads.
        self.graphdef, self.abstract = abstract_model(exp.model, exp.peft, exp.heads)
        self.param_shardings = shd.param_shardings(self.abstract, self.mesh, self.layout.params)
        self.num_params = param_count(self.abstract)

    @classmethod
    def from_workdir(cls, workdir: str, overrides: Optional[Mapping[str, Any]] = None,
                     use_time=None, devices=None) -> "Run":
        """The run trained in ``workdir``: its config.json, with ``use_time``'s sections that may
        differ when a trained model is used (mode, seed, eval, sample, mesh; default: the saved
        ones, the mesh only where it fits the devices) and the dotted ``overrides`` (e.g. from
        the command line) applied on top. Overrides of the model's shape are refused."""
        from lm.train.saved import workdir_config
        config = workdir_config(workdir, overrides, use_time, devices)
        return cls(config, workdir, devices)

    # ------------------------------------------------------------------------- properties

    @property
    def rules(self):
        """Parameters and activations (the layout's first table)."""
        return self.layout.params

    @functools.cached_property
    def vocab(self):
        from lm.data import pipeline as data_lib
        return data_lib.vocabulary(self.exp.data)

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints")

    def with_rules(self, fn):
        """``fn`` traced under this run's (mesh, rules), so that ``constrain`` shards activations."""
        def traced(*args):
            with axis_rules(self.mesh, self.rules):
                return fn(*args)
        return traced

    def abstract_params(self) -> dict:
        """ShapeDtypeStructs of the parameters with their shardings: a restore target."""
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            self.abstract.to_pure_dict(), self.param_shardings)

    # ------------------------------------------------------------------------- parameters

    def init_params(self, seed: Optional[int] = None) -> dict:
        """Freshly initialised parameters, created directly in their shardings under jit."""
        from flax import nnx

        from lm.train.state import build_model
        exp, seed = self.exp, self.exp.seed if seed is None else seed

        def init() -> dict:
            return nnx.split(build_model(exp.model, exp.peft, exp.heads, seed))[1].to_pure_dict()
        with axis_rules(self.mesh, self.rules):
            return jax.jit(init, out_shardings=self.param_shardings)()

    def latest_step(self) -> Optional[int]:
        return latest_step(self.checkpoint_dir)

    def restore(self, step: Optional[int] = None) -> tuple[dict, int]:
        """The parameters saved at ``step`` (default: the latest), sharded on this run's mesh,
        and the step. Reads only the parameters of the checkpoint."""
        self._check_saved_model()
        step = self._step(step)
        params = restore_params(self.checkpoint_dir, step, self.abstract_params())
        log.info("restored the parameters of step %d from %s", step, self.checkpoint_dir)
        return params, step

    def _step(self, step: Optional[int]) -> int:
        """``step`` if its files are sound, else a CheckpointError; by default the newest sound
        step, passing over damaged ones with a line each (training moves those aside; using a
        run changes nothing in its workdir)."""
        if step is not None:
            problem = checksums.verify(os.path.join(self.checkpoint_dir, str(step)))
            if problem:
                raise CheckpointError(f"checkpoint step {step} in {self.checkpoint_dir} {problem}; "
                                      f"use another step, or resume training, which sets it aside")
            return step
        steps = ocp.utils.checkpoint_steps(self.checkpoint_dir) if os.path.isdir(self.checkpoint_dir) else []
        for found in sorted(steps, reverse=True):
            problem = checksums.verify(os.path.join(self.checkpoint_dir, str(found)))
            if not problem:
                return found
            print(f"checkpoint step {found} in {self.checkpoint_dir} {problem}: not used; "
                  f"trying the one before it", flush=True)
        if steps:
            raise CheckpointError(f"every checkpoint in {self.checkpoint_dir} is damaged (see "
                                  f"above); nothing was used")
        raise CheckpointError(f"no checkpoint in {self.checkpoint_dir}: train first "
                              f"(config.mode='pretrain') or point --workdir at a trained run")

    def _check_saved_model(self) -> None:
        workdir_lib.check_workdir(self.workdir, self.exp)

    # ------------------------------------------------------------------------- using parameters

    def eval_sets(self) -> dict[str, list]:
        """Validation batches by source (one set, or one per corpus of a mixture)."""
        from lm.train.validation import eval_sets
        return eval_sets(self)

    @functools.cached_property
    def validation(self):
        """``validation(params, sets)``: eval/loss, perplexity and bits per token on the mesh."""
        from lm.train.validation import Validation
        return Validation(self)

    def evaluate(self, params, sets: Optional[dict] = None) -> dict:
        return self.validation(params, self.eval_sets() if sets is None else sets)

    def sample(self, params, seed: int) -> str:
        """``config.train``'s text sample (prompt, length, temperature) from ``params``."""
        from lm.train.validation import sample_text
        return sample_text(self, params, seed)

    @property
    def can_sample(self) -> bool:
        """Generation from a prompt with the cached decoder (an encoder does not generate)."""
        from lm.models.decoding import decoding_for
        return decoding_for(self.exp.model).can_generate

    def scorer(self, params, batch_size: int = 16, seed: int = 0, step: Optional[int] = None):
        """``ModelScorer`` (loglikelihood, rolling, generate_until) over ``params`` on the mesh."""
        from lm.eval.scoring import ModelScorer
        exp = self.exp
        return ModelScorer(self.graphdef, params, exp.model, self.vocab, exp.data.seq_len,
                           batch_size, seed, step, mesh=self.mesh, rules=self.rules)


def latest_step(checkpoint_dir: str) -> Optional[int]:
    """The latest complete checkpoint's step in ``checkpoint_dir`` (None when there is none)."""
    if not os.path.isdir(checkpoint_dir):
        return None
    steps = ocp.utils.checkpoint_steps(checkpoint_dir)
    return max(steps) if steps else None


def restore_params(checkpoint_dir: str, step: int, abstract_params: dict) -> dict:
    """The ``params`` of the train state saved at ``step``, restored into the shardings of
    ``abstract_params`` without reading the optimizer state."""
    path = os.path.join(os.path.abspath(checkpoint_dir), str(step), "state")
    target = {"params": abstract_params}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype),
                                target)
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise CheckpointError(
            f"the parameters of step {step} in {checkpoint_dir} do not fit the configured model "
            f"({type(e).__name__}: {str(e)[:300]}); load the workdir with the configuration it "
            f"was trained with (its config.json)") from None
    finally:
        checkpointer.close()
    return restored["params"]
