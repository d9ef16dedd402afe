"""``DataConfig`` (``config.data``) and the validation of its fields (base layer of ``lm.data``).

With ``lm.data.windows`` and ``lm.data.mixture_spec`` this is the base layer of the package: it
imports ``corpus``, ``vocab`` and ``mixture_spec`` and none of the modules that build batches
(``tokens``, ``batches``, ``mixture``, ``tasks``, ``cache``, ``objectives``, ``pipeline``), which
all import it. The names of the training objectives and which architectures they fit live here
so that a config is checked without the objectives' feature conversion; ``lm.data.objectives``
re-exports them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lm.configlib import ConfigError, from_section
from lm.data import corpus as corpus_lib
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
class DataConfig:
    backend: str = "array"  # 'array' | 'seqio' | 'synthetic'
    corpus: str = "shakespeare"  # embedded name, .txt file or folder of .txt files
    vocab: str = "char"  # 'char' | 'sentencepiece'
    vocab_model: str = ""  # SentencePiece .model; '' = the shipped shakespeare_sp1024
    seq_len: int = 64  # tokens per row
    batch_size: int = 12  # global batch, summed over processes
    train_fraction: float = 0.9  # leading fraction of characters used for training
    eval_batches: int = 50  # global batches per evaluation
    packing: bool = False  # pack document chunks with segment ids instead of random windows
    synthetic_vocab_size: int = 256  # vocabulary of backend='synthetic'
    mixture: str = ""  # '' = one corpus; registered name ('gutenberg') or 'corpus:rate,...'
    mixture_temperature: float = 1.0  # rates ∝ size^(1/T) when the mixture gives no rates
    cache_dir: str = ""  # pre-tokenized cache (python -m lm.data.cache); '' = tokenize in memory
    prefetch: int = 2  # batches produced ahead on a background thread while training (0: none)
    # Objective (lm/data/objectives.py): causal_lm | prefix_lm | span_corruption | mlm.
    objective: str = "causal_lm"
    eval_objective: str = ""  # '' = objective; e.g. 'prefix_lm' scores every model on one task
    prefix_fraction: float = 0.5  # prefix_lm: share of each window that is the prefix
    noise_density: float = 0.15  # span_corruption: share of tokens hidden
    mean_noise_span_length: float = 3.0  # span_corruption
    mlm_probability: float = 0.15  # mlm: share of positions predicted

    @classmethod
    def from_config(cls, section: Any) -> "DataConfig":
        return from_section(cls, section, "config.data")

    def __post_init__(self):
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

def _check_choice(cfg: DataConfig, name: str, choices: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in choices:
        raise ConfigError(f"config.data.{name}={getattr(cfg, name)!r} is not one of "
                          f"{', '.join(map(repr, choices))}.")


def _check_positive_int(cfg: DataConfig, name: str, minimum: int = 1) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"config.data.{name}={value!r} must be an integer >= {minimum}.")


def _validate(cfg: DataConfig) -> None:
    _check_choice(cfg, "backend", BACKENDS)
    _check_choice(cfg, "vocab", vocab_lib.KINDS)
    for name in ("seq_len", "batch_size", "eval_batches"):
        _check_positive_int(cfg, name)
    _check_positive_int(cfg, "prefetch", minimum=0)
    _check_positive_int(cfg, "synthetic_vocab_size", minimum=vocab_lib.NUM_RESERVED + 1)
    if not isinstance(cfg.corpus, str) or not cfg.corpus:
        raise ConfigError("config.data.corpus must name an embedded corpus "
                          f"({', '.join(corpus_lib.EMBEDDED)}) or a .txt file or folder.")
    if not isinstance(cfg.train_fraction, (int, float)) or not 0 < cfg.train_fraction < 1:
        raise ConfigError(f"config.data.train_fraction={cfg.train_fraction!r} must lie strictly "
                          "between 0 and 1 (e.g. 0.9).")
    if cfg.vocab_model and cfg.vocab != "sentencepiece":
        raise ConfigError("config.data.vocab_model is only read with config.data.vocab="
                          "'sentencepiece'; set one or clear the other.")
    if not isinstance(cfg.packing, bool):
        raise ConfigError(f"config.data.packing={cfg.packing!r} must be True or False.")
    if cfg.packing and cfg.backend == "synthetic":
        raise ConfigError("config.data.packing needs documents; use backend 'array' or 'seqio', "
                          "or set packing=False for synthetic data.")
    _validate_mixture(cfg)
    _validate_objective_fields(cfg)
    if cfg.cache_dir and (cfg.backend != "array" or cfg.mixture):
        raise ConfigError("config.data.cache_dir is read by backend 'array' without a mixture; "
                          "clear config.data.cache_dir or set backend='array'.")


def _validate_objective_fields(cfg: DataConfig) -> None:
    validate_objective(cfg.objective, "", "config.data.objective")
    if cfg.eval_objective:
        validate_objective(cfg.eval_objective, "", "config.data.eval_objective")
    for name in ("prefix_fraction", "noise_density", "mlm_probability"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"config.data.{name}={value!r} must lie strictly between 0 and 1.")
    if not isinstance(cfg.mean_noise_span_length, (int, float)) or cfg.mean_noise_span_length < 1:
        raise ConfigError(f"config.data.mean_noise_span_length={cfg.mean_noise_span_length!r} "
                          "must be >= 1.")
    if cfg.packing and {cfg.objective, cfg.eval_objective} - {"causal_lm", ""}:
        raise ConfigError(f"config.data.packing=True packs documents for causal_lm; objective "
                          f"{cfg.objective!r} converts unpacked windows: set packing=False.")


def _validate_mixture(cfg: DataConfig) -> None:
    if not isinstance(cfg.mixture_temperature, (int, float)) or not cfg.mixture_temperature > 0:
        raise ConfigError(f"config.data.mixture_temperature={cfg.mixture_temperature!r} must be "
                          "a positive number (1 = rates follow sizes).")
    if not cfg.mixture:
        return
    if cfg.backend != "array":
        raise ConfigError(f"config.data.mixture needs backend 'array', not {cfg.backend!r}; the "
                          "seqio mixture is lm.data.tasks.register_mixture.")
    mixture_spec.parse_mixture(cfg.mixture)  # raises a ConfigError naming the field
