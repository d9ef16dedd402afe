"""The typed sections of one experiment: ``Experiment.from_config(config)`` checks them all."""
from __future__ import annotations

import dataclasses

import jax

from lm.configlib import ConfigError, Section, at_least, option, positive
from lm.data import pipeline as data_lib
from lm.models.config import ModelConfig
from lm.parallel import MeshConfig
from lm.parallel.axes import mesh_ways
from lm.peft.config import PeftConfig
from lm.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    where = "config.train"
    steps: int = option(2000, "optimizer updates", at_least(1))
    eval_every: int = option(250, "validation loss (and a sample) every N steps and at the end",
                             at_least(1))
    checkpoint_every: int = option(500, "checkpoint every N steps and at the end; resumed "
                                   "automatically", at_least(1))
    keep_checkpoints: int = option(3, "older checkpoints are deleted", at_least(1))
    async_checkpoint: bool = option(True, "write checkpoints in the background")
    log_every: int = option(50, "train metrics to metrics.jsonl / TensorBoard every N steps",
                            at_least(1))
    grad_accum_steps: int = option(1, "microbatches per step (config.data.batch_size must "
                                   "divide by it)", at_least(1))
    z_loss: float = option(0.0, "PaLM's auxiliary z_loss * log(Z)^2 (PaLM: 1e-4)", at_least(0))
    sample_tokens: int = option(200, "characters/tokens generated at each evaluation",
                                at_least(0, "0: none"))
    sample_prompt: str = option("\n", "sampling starts from this text", escapes=True)
    sample_temperature: float = option(0.8, "0: greedy", at_least(0))
    sample_top_k: int = option(0, "sample from the k most likely tokens", at_least(0, "0: all"))
    progress: bool = option(True, "progress bar with ETA")
    spike_skip: bool = option(True, "skip a step whose loss, gradients or update are not finite, "
                              "or whose loss or gradient norm is a spike (lm.train.spikes)")
    spike_window: int = option(128, "accepted steps whose loss and gradient norm define a spike",
                               at_least(4))
    spike_zscore: float = option(6.0, "a spike: more than this many standard deviations above "
                                 "the window's mean", positive())
    spike_rollback_after: int = option(8, "skipped steps in a row (or non-finite parameters at a "
                                       "checkpoint) that roll back to the last checkpoint",
                                       at_least(1))
    spike_skip_batches: int = option(100, "batches skipped after a rollback, past those that "
                                     "caused it (PaLM skipped 200-500)", at_least(0))
    spike_max_rollbacks: int = option(3, "rollbacks before the run stops with exit code 2",
                                      at_least(0, "0: stop at the first"))
    stop_on_signal: bool = option(True, "SIGTERM / SIGINT: finish the step, save a checkpoint, "
                                  "exit 0 (a second SIGINT stops at once)")


# The scalar heads (lm.models.heads) the runs of a config.mode carry: a reward model's score,
# PPO's value.
MODE_HEADS = {"reward": ("score",), "ppo": ("value",)}


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
    # Scalar heads on the decoder (lm.models.heads), by the mode: a reward model's score, PPO's value.
    heads: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config) -> "Experiment":
        data = data_lib.DataConfig.from_config(config.data)
        mesh = MeshConfig.from_config(config.mesh)
        model = resolve_model(ModelConfig.from_config(config.model), data, mesh)
        peft = PeftConfig.from_config(config.get("peft"))
        peft.check_model(model)
        _check_architecture(model, data, peft)
        return cls(model=model, data=data,
                   optimizer=OptimizerConfig.from_config(config.optimizer),
                   train=TrainConfig.from_config(config.train), mesh=mesh, seed=int(config.seed),
                   peft=peft, heads=mode_heads(config.get("mode", "pretrain"), model))


def mode_heads(mode: str, model: ModelConfig) -> tuple[str, ...]:
    """The scalar heads the runs of ``mode`` carry (MODE_HEADS)."""
    heads = MODE_HEADS.get(mode, ())
    if heads and model.arch != "decoder":
        raise ConfigError(f"config.mode={mode!r} puts a {'/'.join(heads)} head on a causal decoder: "
                          f"set config.model.arch='decoder' (it is {model.arch!r})")
    return heads


def resolve_model(model: ModelConfig, data: data_lib.DataConfig, mesh: MeshConfig) -> ModelConfig:
    """The one step that fills the model's derived fields: the vocabulary size from the data
    (when 0) and the pipeline stage count from the mesh."""
    needed = data_lib.vocab_size(data)
    if model.vocab_size == 0:
        model = dataclasses.replace(model, vocab_size=needed)
    elif model.vocab_size < needed:
        raise ConfigError(f"config.model.vocab_size={model.vocab_size} is smaller than the data's "
                          f"{needed} ids (vocabulary plus the objective's sentinel / MASK ids); "
                          f"set it to 0 to take it from the data")
    model = _with_pipeline_stages(model, mesh)
    model.check_pipeline()
    return model


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


def _check_microbatches(exp: Experiment, batch_ways: int) -> None:
    """Every pipeline microbatch must split evenly over the batch axes of the mesh; the advice
    lists the microbatch counts and batch sizes that would work."""
    accum, stages = exp.train.grad_accum_steps, exp.model.pipeline_stages
    per_step = exp.data.batch_size // accum
    micro = exp.model.microbatches
    if per_step % micro == 0 and (per_step // micro) % batch_ways == 0:
        return
    counts = [m for m in range(stages, per_step + 1)
              if per_step % m == 0 and (per_step // m) % batch_ways == 0]
    fixes = [f"config.data.batch_size a multiple of {micro * batch_ways * accum} (e.g. "
             f"{_next_multiple(exp.data.batch_size, micro * batch_ways * accum)})"]
    if counts:
        fixes.insert(0, f"config.model.pipeline_microbatches in {counts}")
    raise ConfigError(f"config.model.pipeline_microbatches={micro} splits the {per_step} rows per "
                      f"step (config.data.batch_size / config.train.grad_accum_steps) into "
                      f"microbatches that do not divide over the batch axes of the mesh "
                      f"({batch_ways} ways; at least {stages} microbatches, one per stage); use "
                      + " or ".join(fixes))


def _next_multiple(value: int, step: int) -> int:
    return -(-value // step) * step


def check_layout(exp: Experiment, mesh, batch_sharding) -> None:
    """Batch and sequence must divide by the mesh axes that split them; names the fields. (A
    model dimension that does not divide its mesh axes is replicated there, with a warning:
    lm.parallel.sharding.param_shardings.)"""
    ways = mesh_ways(mesh, batch_sharding.spec[0])
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
