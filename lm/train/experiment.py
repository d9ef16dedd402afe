"""The typed sections of one experiment: ``Experiment.from_config(config)`` checks them all."""
from __future__ import annotations

import dataclasses
import math

import jax

from lm.configlib import ConfigError, from_section
from lm.data import pipeline as data_lib
from lm.models.config import ModelConfig
from lm.parallel import MeshConfig
from lm.peft.config import PeftConfig
from lm.parallel.rules import layout as named_layout
from lm.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000               # optimizer updates
    eval_every: int = 250           # validation loss (and samples) every N steps and at the end
    checkpoint_every: int = 500     # and at the end
    keep_checkpoints: int = 3
    async_checkpoint: bool = True   # write checkpoints in the background
    log_every: int = 50             # train metrics to metrics.jsonl / TensorBoard
    grad_accum_steps: int = 1       # microbatches per step (batch_size must divide by it)
    z_loss: float = 0.0             # PaLM uses 1e-4
    sample_tokens: int = 200        # characters/tokens generated at each eval (0: none)
    sample_prompt: str = "\n"
    sample_temperature: float = 0.8
    sample_top_k: int = 0
    progress: bool = True           # progress bar with ETA

    @classmethod
    def from_config(cls, section) -> "TrainConfig":
        cfg = from_section(cls, section, "config.train")
        for field in ("steps", "eval_every", "checkpoint_every", "log_every", "grad_accum_steps"):
            if getattr(cfg, field) <= 0:
                raise ConfigError(f"config.train.{field} must be positive, got {getattr(cfg, field)}")
        return cfg


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The typed sections of one experiment config."""
    model: ModelConfig
    data: data_lib.DataConfig
    optimizer: OptimizerConfig
    train: TrainConfig
    mesh: MeshConfig
    seed: int
    # The fine-tuning method applied to the model (lm.peft.build attaches it); 'none': the model.
    peft: PeftConfig = PeftConfig()

    @classmethod
    def from_config(cls, config) -> "Experiment":
        data = data_lib.DataConfig.from_config(config.data)
        mesh = MeshConfig.from_config(config.mesh)
        # Validated only after the derived fields (vocabulary size, stage count) are filled in.
        model = _model_config(config)
        needed = data_lib.vocab_size(data)
        if model.vocab_size == 0:
            model = dataclasses.replace(model, vocab_size=needed)
        elif model.vocab_size < needed:
            raise ConfigError(f"config.model.vocab_size={model.vocab_size} is smaller than the data's "
                              f"{needed} ids (vocabulary plus the objective's sentinel / MASK ids); "
                              f"set it to 0 to take it from the data")
        model = _with_pipeline_stages(model, mesh).validated()
        peft = peft_config(config)
        peft.check_model(model)
        _check_architecture(model, data, peft)
        return cls(model=model, data=data,
                   optimizer=OptimizerConfig.from_config(config.optimizer),
                   train=TrainConfig.from_config(config.train), mesh=mesh, seed=int(config.seed),
                   peft=peft)


def _model_config(config) -> ModelConfig:
    """config.model, without the ``peft`` entry that workdirs saved before PEFT moved out of
    the model section carry in it (``peft_config`` reads that)."""
    from lm.configlib import _as_mapping

    section = dict(_as_mapping(config.model))
    section.pop("peft", None)
    return from_section(ModelConfig, section, "config.model")


def peft_config(config) -> PeftConfig:
    """config.peft; for a workdir saved before it moved out of the model section, the ``peft``
    entry nested in config.model (config.peft wins when both are given)."""
    from lm.configlib import _as_mapping

    peft = config.get("peft")
    if peft is None:
        peft = dict(_as_mapping(config.model)).get("peft")
    return from_section(PeftConfig, peft, "config.peft").validated()


def _check_architecture(model: ModelConfig, data: data_lib.DataConfig, peft: PeftConfig) -> None:
    """The objectives must fit the architecture; only decoder stacks are pipelined."""
    from lm.data import objectives

    objectives.validate(data.objective, model.arch)
    if data.eval_objective:
        objectives.validate(data.eval_objective, model.arch, "config.data.eval_objective")
    if model.pipelined and model.arch not in ("decoder", "prefix_decoder", "encoder"):
        raise ConfigError(f"config.model.arch={model.arch!r} has no pipelined form; pipeline "
                          f"parallelism (config.mesh.pipeline > 1) runs decoder and encoder stacks")
    prompt = peft.prompt_length if peft.method == "prompt" else 0
    if model.positions == "learned" and prompt and data.seq_len + prompt > model.max_len:
        raise ConfigError(f"config.peft.method='prompt': the {prompt} soft-prompt positions and "
                          f"config.data.seq_len={data.seq_len} exceed config.model.max_len={model.max_len} "
                          f"(learned positions); set config.data.seq_len <= {model.max_len - prompt}")
    if model.positions == "learned":
        for name in {data.objective, data.eval_objective or data.objective}:
            length = objectives.feature_length(objectives.objective_config(data, 0, name), model.arch)
            if length > model.max_len:
                raise ConfigError(f"config.model.max_len={model.max_len} is shorter than the {length} "
                                  f"positions objective {name!r} reads with config.data.seq_len="
                                  f"{data.seq_len}; raise max_len to at least {length}")
    if model.arch in ("encoder_decoder", "lstm") and data.packing:
        raise ConfigError(f"config.model.arch={model.arch!r} trains on unpacked rows; set "
                          f"config.data.packing=False")


def _with_pipeline_stages(model: ModelConfig, mesh: MeshConfig) -> ModelConfig:
    """The pipeline axis sets the stage count (unless the model asks for a multiple of it)."""
    ways = mesh.pipeline * mesh.dcn_pipeline
    if ways < 1:
        raise ConfigError(f"config.mesh.pipeline={mesh.pipeline}: the pipeline axis cannot be -1")
    if ways == 1:
        return model
    if model.pipeline_stages == 1:
        return dataclasses.replace(model, pipeline_stages=ways)
    if model.pipeline_stages % ways:
        raise ConfigError(f"config.model.pipeline_stages={model.pipeline_stages} is not a multiple "
                          f"of the pipeline axis (config.mesh.pipeline={ways})")
    return model


def _mesh_size(mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def _check_microbatches(exp: Experiment, batch_ways: int) -> None:
    per_step = exp.data.batch_size // exp.train.grad_accum_steps
    micro = exp.model.microbatches
    if per_step % micro:
        raise ConfigError(f"config.model.pipeline_microbatches={micro} does not divide the batch of "
                          f"{per_step} rows per step (config.data.batch_size / "
                          f"config.train.grad_accum_steps)")
    if (per_step // micro) % batch_ways:
        raise ConfigError(f"each of the {micro} pipeline microbatches has {per_step // micro} rows, "
                          f"not divisible by the batch axes of the mesh ({batch_ways} ways); raise "
                          f"config.data.batch_size or lower config.model.pipeline_microbatches")


def check_layout(exp: Experiment, mesh, batch_sharding) -> None:
    """Batch, sequence and heads must divide by the mesh axes that split them; names the fields."""
    ways = _mesh_size(mesh, batch_sharding.spec[0])
    batch, accum = exp.data.batch_size, exp.train.grad_accum_steps
    if batch % accum:
        raise ConfigError(f"config.data.batch_size={batch} is not divisible by "
                          f"config.train.grad_accum_steps={accum}")
    if (batch // accum) % ways:
        raise ConfigError(f"config.data.batch_size={batch} (per microbatch {batch // accum}) is not "
                          f"divisible by the batch axes of the mesh ({batch_sharding.spec[0]} = "
                          f"{ways} ways); use a multiple of {ways * accum}")
    if batch % jax.process_count():
        raise ConfigError(f"config.data.batch_size={batch} must divide by the "
                          f"{jax.process_count()} processes")
    if exp.model.pipelined:
        _check_microbatches(exp, ways)
    if exp.data.seq_len % mesh.shape["sequence"]:
        raise ConfigError(f"config.data.seq_len={exp.data.seq_len} is not divisible by "
                          f"config.mesh.sequence={mesh.shape['sequence']}")
    tensor = mesh.shape["tensor"]
    if tensor > 1 and dict(named_layout(exp.mesh.rules).params).get("heads") == "tensor" \
            and exp.model.num_heads % tensor:
        raise ConfigError(f"config.model.num_heads={exp.model.num_heads} is not divisible by "
                          f"config.mesh.tensor={tensor}; choose a tensor size that divides the "
                          f"heads")
