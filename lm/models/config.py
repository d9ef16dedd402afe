"""ModelConfig: the typed form of ``config.model``."""
from __future__ import annotations

import dataclasses

from lm.configlib import ConfigError, Section, at_least, fraction, one_of, option, positive

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu", "swiglu", "geglu")
BLOCKS = ("serial", "parallel")
REMATS = ("none", "minimal", "full")
ATTENTIONS = ("auto", "dot_product", "exact")
DTYPES = ("float32", "bfloat16", "float16")
# decoder: causal decoder-only Transformer (GPT); prefix_decoder: the same network attending
# bidirectionally over each example's prefix (the batch's `bidirectional` field) and causally
# over its target; encoder: bidirectional encoder-only Transformer (BERT-style, masked LM);
# encoder_decoder: T5-style encoder + decoder with cross-attention; lstm: recurrent baseline.
ARCHS = ("decoder", "prefix_decoder", "encoder", "encoder_decoder", "lstm")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """Model hyperparameters; 0 in a size field means 'derive it' (see the properties)."""
    where = "config.model"
    arch: str = option("decoder", "the network (ARCHS above)", one_of(*ARCHS))
    vocab_size: int = option(0, "embedding rows", at_least(0, "0: the data's vocabulary"))
    num_layers: int = option(4, "decoder layers (LSTM: recurrent layers)", at_least(1))
    num_encoder_layers: int = option(0, "encoder_decoder only", at_least(0, "0: = num_layers"))
    d_model: int = option(128, "width of the residual stream", at_least(1))
    num_heads: int = option(4, "attention heads", at_least(1))
    num_kv_heads: int = option(0, "key/value heads; 1: multi-query; other: grouped-query",
                               at_least(0, "0: = num_heads"))
    head_dim: int = option(0, "features per head", at_least(0, "0: d_model // num_heads"))
    d_ff: int = option(0, "MLP hidden width", at_least(0, "0: 4 * d_model"))
    max_len: int = option(2048, "longest sequence; the table size of learned positions",
                          at_least(1))
    positions: str = option("learned", "position encoding", one_of(*POSITIONS))
    rope_theta: float = option(10_000.0, "RoPE base wavelength", positive())
    norm: str = option("layernorm", "normalisation layer", one_of(*NORMS))
    norm_eps: float = option(1e-5, "added to the variance", positive())
    mlp: str = option("gelu", "MLP activation (swiglu/geglu: gated)", one_of(*MLPS))
    block: str = option("serial", "serial (pre-norm GPT) | parallel (PaLM: x + attn(n(x)) + "
                        "mlp(n(x)))", one_of(*BLOCKS))
    tie_embeddings: bool = option(True, "output projection = input embedding transposed")
    use_bias: bool = option(False, "biases in dense layers and LayerNorm")
    dropout: float = option(0.0, "dropout rate", fraction(low_open=False))
    init_std: float = option(0.02, "standard deviation of the initial weights", positive())
    scale_residual_init: bool = option(True, "output projections start with std / sqrt(2 * "
                                       "num_layers)")
    scan_layers: bool = option(False, "stack layers and run them with lax.scan (fast compiles)")
    # Pipeline parallelism (lm/parallel/pipeline.py); the stage count comes from
    # config.mesh.pipeline. With more than one stage the blocks are stacked as [stages, layers]
    # ([repeats, stages, layers] for the circular schedule) whatever scan_layers says.
    pipeline_stages: int = option(1, "S: consecutive groups of layers, one per pipeline shard "
                                  "(set from config.mesh.pipeline)", at_least(1))
    pipeline_microbatches: int = option(0, "M: the batch is split into M microbatches",
                                        at_least(0, "0: = pipeline_stages"))
    pipeline_repeats: int = option(1, "R: circular schedule when > 1 (each stage holds R layer "
                                   "groups)", at_least(1))
    remat: str = option("none", "none | minimal (save matmul outputs) | full", one_of(*REMATS))
    # auto: jax.nn.dot_product_attention (cuDNN flash attention on GPU) on accelerators, exact
    # einsum-softmax on CPU (faster there) | dot_product | exact
    attention: str = option("auto", "attention kernel", one_of(*ATTENTIONS))
    dtype: str = option("float32", "compute dtype of activations and matmuls", one_of(*DTYPES))
    param_dtype: str = option("float32", "master parameters", one_of(*DTYPES))

    @property
    def encoder_layers(self) -> int:
        return self.num_encoder_layers or self.num_layers

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def gated_mlp(self) -> bool:
        return self.mlp in ("swiglu", "geglu")

    @property
    def pipelined(self) -> bool:
        return self.pipeline_stages > 1

    @property
    def microbatches(self) -> int:
        return self.pipeline_microbatches or self.pipeline_stages

    @property
    def layers_per_stage(self) -> int:
        """Consecutive layers a stage runs per pass (per repeat in the circular schedule)."""
        return self.num_layers // (self.pipeline_stages * self.pipeline_repeats)

    def check(self) -> None:
        if self.num_heads % self.kv_heads:
            raise ConfigError(f"config.model.num_heads={self.num_heads} must be a multiple of "
                              f"num_kv_heads={self.kv_heads}")
        if not self.head_dim and self.d_model % self.num_heads:
            raise ConfigError(f"config.model.d_model={self.d_model} is not divisible by num_heads="
                              f"{self.num_heads}; set config.model.head_dim explicitly")
        if self.positions == "rope" and self.dim_per_head % 2:
            raise ConfigError("config.model.positions='rope' needs an even head_dim")
        if self.pipelined:
            self.check_pipeline()

    def check_pipeline(self) -> None:
        """The pipeline fields against each other. The stage count comes from the mesh
        (``lm.train.experiment.resolve_model``), so an unpipelined config is checked only once it
        is resolved: ``pipeline_repeats=2`` is fine until the mesh turns out to have no pipeline."""
        stages, repeats, microbatches = (self.pipeline_stages, self.pipeline_repeats,
                                         self.pipeline_microbatches)
        if repeats > 1 and stages == 1:
            raise ConfigError(f"config.model.pipeline_repeats={repeats} needs "
                              f"pipeline_stages > 1 (the circular schedule runs over stages)")
        if self.num_layers % (stages * repeats):
            raise ConfigError(
                f"config.model.num_layers={self.num_layers} is not divisible by pipeline_stages"
                f" * pipeline_repeats = {stages} * {repeats}; every stage must hold the same "
                f"number of layers")
        # Both schedules need M >= S: with fewer microbatches than stages, a stage would idle
        # every pass (GPipe) and, in the circular schedule, a microbatch leaving the last stage
        # would be needed by the first stage before it has arrived there.
        if stages > 1 and self.microbatches < stages:
            raise ConfigError(
                f"config.model.pipeline_microbatches={microbatches} gives a microbatch count "
                f"below the stage count (pipeline_stages={stages}); use at least {stages} "
                f"(or 0 for exactly {stages})")
