"""``DataConfig`` (``config.data``): its fields, defaults and constraints (a leaf of ``lm.data``).

It imports only the leaves ``vocab`` and ``mixture_spec``; the modules that build batches and
the backends import it. The names of the training objectives and which architectures they fit
live here so that a config is checked without the objectives' feature conversion;
``lm.data.objectives`` re-exports them.
"""
from __future__ import annotations

import dataclasses

from lm.configlib import ConfigError, Section, at_least, fraction, one_of, option, positive, rule
from lm.data import mixture_spec
from lm.data import vocab as vocab_lib

BACKENDS = ("array", "seqio", "synthetic")
OBJECTIVES = ("causal_lm", "prefix_lm", "span_corruption", "mlm")
# Which objectives each architecture (config.model.arch) trains with.
FITS = {
    "decoder": ("causal_lm", "prefix_lm", "span_corruption"),
    "prefix_decoder": ("prefix_lm", "span_corruption"),
    "encoder": ("mlm",),
    "encoder_decoder": ("prefix_lm", "span_corruption"),
    "lstm": ("causal_lm", "prefix_lm"),
}


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    where = "config.data"
    backend: str = option("array", "array (NumPy, no TensorFlow) | seqio (tf.data) | synthetic",
                          one_of(*BACKENDS))
    corpus: str = option("shakespeare", "embedded corpus name, or a .txt file / folder of them",
                         rule(bool, "must name an embedded corpus or a .txt file or folder", ""))
    vocab: str = option("char", "char | sentencepiece", one_of(*vocab_lib.KINDS))
    vocab_model: str = option("", "SentencePiece .model path ('' = the shipped "
                              "shakespeare_sp1024)")
    seq_len: int = option(64, "context length (tokens per training window)", at_least(1))
    batch_size: int = option(12, "global batch, in windows (summed over processes)",
                             at_least(1))
    train_fraction: float = option(0.9, "the leading share of characters that trains; the rest "
                                   "validates", fraction())
    eval_batches: int = option(50, "validation batches per evaluation", at_least(1))
    packing: bool = option(False, "pack documents with segment ids instead of random windows")
    synthetic_vocab_size: int = option(256, "vocabulary of backend='synthetic'",
                                       at_least(vocab_lib.NUM_RESERVED + 1))
    mixture: str = option("", "'' = one corpus; a registered name ('gutenberg') or "
                          "'shakespeare:0.7,milton:0.3'")
    mixture_temperature: float = option(1.0, "mixture rates follow size^(1/T) when none are "
                                        "given", positive())
    cache_dir: str = option("", "pre-tokenized cache (python -m lm.data.cache); '' = tokenize "
                            "in memory")
    prefetch: int = option(2, "batches prepared ahead on a background thread",
                           at_least(0, "0: none"))
    # Objective (lm/data/objectives.py), which must fit config.model.arch.
    objective: str = option("causal_lm", "the training objective", one_of(*OBJECTIVES))
    eval_objective: str = option("", "'' = objective; e.g. 'prefix_lm' scores every "
                                 "architecture on one task", one_of("", *OBJECTIVES))
    prefix_fraction: float = option(0.5, "prefix_lm: share of each window that is the prefix",
                                    fraction())
    noise_density: float = option(0.15, "span_corruption: share of tokens hidden behind "
                                  "sentinels", fraction())
    mean_noise_span_length: float = option(3.0, "span_corruption: mean hidden span length",
                                           at_least(1))
    mlm_probability: float = option(0.15, "mlm: share of positions masked and predicted",
                                    fraction())

    def check(self) -> None:
        _validate(self)

    @property
    def model_path(self) -> str:
        """The SentencePiece model file this config uses."""
        return self.vocab_model or str(vocab_lib.DEFAULT_SENTENCEPIECE_MODEL)


def validate_objective(objective: str, arch: str, field: str = "config.data.objective") -> None:
    """Raises a ConfigError unless ``objective`` is known and fits ``arch`` ('' fits any)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"{field}={objective!r} is not one of {', '.join(OBJECTIVES)}")
    if arch in FITS and objective not in FITS[arch]:
        fits = [a for a, objectives in FITS.items() if objective in objectives]
        raise ConfigError(f"{field}={objective!r} does not fit config.model.arch={arch!r}, which trains "
                          f"with {', '.join(FITS[arch])}; {objective} fits {', '.join(fits)}")


# ----------------------------------------------------------------------------- validation

def _validate(cfg: DataConfig) -> None:
    """Constraints between fields (each field's own rules are checked on construction)."""
    if cfg.vocab_model and cfg.vocab != "sentencepiece":
        raise ConfigError("config.data.vocab_model is only read with config.data.vocab="
                          "'sentencepiece'; set one or clear the other.")
    if cfg.packing and cfg.backend == "synthetic":
        raise ConfigError("config.data.packing needs documents; use backend 'array' or 'seqio', "
                          "or set packing=False for synthetic data.")
    if cfg.packing and {cfg.objective, cfg.eval_objective} - {"causal_lm", ""}:
        raise ConfigError(f"config.data.packing=True packs documents for causal_lm; objective "
                          f"{cfg.objective!r} converts unpacked windows: set packing=False.")
    _validate_mixture(cfg)
    if cfg.cache_dir and (cfg.backend != "array" or cfg.mixture):
        raise ConfigError("config.data.cache_dir is read by backend 'array' without a mixture; "
                          "clear config.data.cache_dir or set backend='array'.")


def _validate_mixture(cfg: DataConfig) -> None:
    if not cfg.mixture:
        return
    if cfg.backend != "array":
        raise ConfigError(f"config.data.mixture needs backend 'array', not {cfg.backend!r}; the "
                          "seqio mixture is lm.data.tasks.register_mixture.")
    mixture_spec.parse_mixture(cfg.mixture)  # raises a ConfigError naming the field
