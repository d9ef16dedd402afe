"""ModelConfig: the typed form of ``config.model``."""
from __future__ import annotations

import dataclasses

from lm.configlib import ConfigError, from_section

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
class ModelConfig:
    """Model hyperparameters; 0 in a size field means 'derive it' (see the properties)."""
    arch: str = "decoder"          # decoder | prefix_decoder | encoder | encoder_decoder | lstm
    vocab_size: int = 0            # 0: taken from the data's vocabulary at build time
    num_layers: int = 4            # decoder layers (LSTM: recurrent layers)
    num_encoder_layers: int = 0    # encoder_decoder only; 0: = num_layers
    d_model: int = 128
    num_heads: int = 4
    num_kv_heads: int = 0          # 0: = num_heads (MHA); 1: multi-query; other: grouped-query
    head_dim: int = 0              # 0: d_model // num_heads
    d_ff: int = 0                  # 0: 4 * d_model
    max_len: int = 2048            # table size for learned positions
    positions: str = "learned"     # learned | sinusoidal | rope | alibi | none
    rope_theta: float = 10_000.0
    norm: str = "layernorm"        # layernorm | rmsnorm
    norm_eps: float = 1e-5
    mlp: str = "gelu"              # gelu | relu | swiglu | geglu
    block: str = "serial"          # serial (pre-norm GPT) | parallel (PaLM: x + attn(n(x)) + mlp(n(x)))
    tie_embeddings: bool = True    # output projection = input embedding transposed
    use_bias: bool = False         # biases in dense layers and LayerNorm
    dropout: float = 0.0
    init_std: float = 0.02
    scale_residual_init: bool = True  # output projections init with std / sqrt(2 * num_layers)
    scan_layers: bool = False      # stack layers and run them with lax.scan (fast compiles)
    # Pipeline parallelism (lm/parallel/pipeline.py); the trainer sets the stage count from
    # config.mesh.pipeline. With more than one stage the blocks are stacked as [stages, layers]
    # ([repeats, stages, layers] for the circular schedule) whatever scan_layers says.
    pipeline_stages: int = 1       # S: consecutive groups of layers, one per pipeline shard
    pipeline_microbatches: int = 0  # M: the batch is split into M microbatches; 0: = stages
    pipeline_repeats: int = 1      # R: circular schedule when > 1 (each stage holds R layer groups)
    remat: str = "none"            # none | minimal (save matmul outputs) | full
    # auto: jax.nn.dot_product_attention (cuDNN flash attention on GPU) on accelerators, exact
    # einsum-softmax on CPU (faster there) | dot_product | exact
    attention: str = "auto"
    dtype: str = "float32"         # compute dtype of activations and matmuls
    param_dtype: str = "float32"   # master parameters

    @classmethod
    def from_config(cls, section) -> "ModelConfig":
        return from_section(cls, section, "config.model").validated()

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

    def validated(self) -> "ModelConfig":
        choices = {"arch": ARCHS, "positions": POSITIONS, "norm": NORMS, "mlp": MLPS, "block": BLOCKS,
                   "remat": REMATS, "attention": ATTENTIONS, "dtype": DTYPES,
                   "param_dtype": DTYPES}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ConfigError(f"config.model.{field}={getattr(self, field)!r} is not one of "
                                  f"{', '.join(allowed)}")
        for field in ("num_layers", "d_model", "num_heads"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"config.model.{field} must be positive, got {getattr(self, field)}")
        if self.num_heads % self.kv_heads:
            raise ConfigError(f"config.model.num_heads={self.num_heads} must be a multiple of "
                              f"num_kv_heads={self.kv_heads}")
        if not self.head_dim and self.d_model % self.num_heads:
            raise ConfigError(f"config.model.d_model={self.d_model} is not divisible by num_heads="
                              f"{self.num_heads}; set config.model.head_dim explicitly")
        if self.positions == "rope" and self.dim_per_head % 2:
            raise ConfigError("config.model.positions='rope' needs an even head_dim")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config.model.dropout must be in [0, 1), got {self.dropout}")
        self._validate_pipeline()
        return self

    def _validate_pipeline(self) -> None:
        stages, repeats, microbatches = (self.pipeline_stages, self.pipeline_repeats,
                                         self.pipeline_microbatches)
        for field in ("pipeline_stages", "pipeline_repeats"):
            if getattr(self, field) < 1:
                raise ConfigError(f"config.model.{field} must be >= 1, got {getattr(self, field)}")
        if microbatches < 0:
            raise ConfigError(f"config.model.pipeline_microbatches must be >= 0 (0: = "
                              f"pipeline_stages), got {microbatches}")
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
