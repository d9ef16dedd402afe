"""Mixture strings: ``config.data.mixture`` parsed into sources, rates and domains.

A leaf of ``lm.data`` that imports only ``corpus`` (for the sizes that set temperature rates),
so ``lm.data.config`` validates a mixture with it, ``lm.data.tokens`` reads a mixture's corpora
and the seqio backend registers a mixture's rates without importing the mixture sampler
(``lm.data.mixture``, which re-exports every name here and documents the mixture format).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from lm.configlib import ConfigError
from lm.data import corpus as corpus_lib

DOMAINS = ("general", "specialized")
# The embedded corpora are plays, poems and an encyclopaedia: books and reference prose.
DEFAULT_DOMAINS = {"shakespeare": "general", "milton": "general", "britannica": "general"}
_DOMAIN_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # '@<word>' ending an entry is a domain


def default_domain(source: str) -> str:
    """The domain of a source whose mixture entry gives none."""
    return DEFAULT_DOMAINS.get(source, "general")


def _check_domain(domain: str, where: str) -> str:
    if domain not in DOMAINS:
        raise ConfigError(f"config.data.mixture {where}: unknown domain {domain!r}; use one of "
                          f"{', '.join(map(repr, DOMAINS))} after an '@'.")
    return domain


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    sources: tuple[str, ...]  # corpora: embedded names, .txt files or folders, datasets
    rates: tuple[float, ...] | None = None  # None: from sizes with temperature
    domains: tuple[str, ...] | None = None  # None: each source's default_domain

    def __post_init__(self):
        if self.domains is None:
            object.__setattr__(self, "domains", tuple(map(default_domain, self.sources)))
        if len(self.domains) != len(self.sources):
            raise ConfigError(f"MixtureSpec{self.sources}: give one domain per source, not "
                              f"{self.domains}.")
        for domain in self.domains:
            _check_domain(domain, f"source domains {self.domains}")


MIXTURES = {
    # The three embedded Gutenberg corpora, rates from their sizes and the temperature.
    "gutenberg": MixtureSpec(("shakespeare", "milton", "britannica")),
}


# ----------------------------------------------------------------------------- parsing

def parse_mixture(mixture: str) -> MixtureSpec:
    """The spec of a registered name or of 'corpus[:rate][@domain],...'."""
    if mixture in MIXTURES:
        return MIXTURES[mixture]
    entries = [entry.strip() for entry in mixture.split(",") if entry.strip()]
    parsed = [_parse_entry(entry) for entry in entries]
    sources, rates, domains = zip(*parsed) if parsed else ((), (), ())
    if not sources or len(set(sources)) != len(sources):
        raise ConfigError(f"config.data.mixture={mixture!r} must be a registered mixture "
                          f"({', '.join(MIXTURES)}) or distinct 'corpus[:rate][@domain]' entries "
                          f"separated by commas.")
    if any(r is None for r in rates) and any(r is not None for r in rates):
        raise ConfigError(f"config.data.mixture={mixture!r}: give a rate for every corpus or "
                          f"for none (then rates follow sizes and mixture_temperature).")
    return MixtureSpec(tuple(sources), None if rates[0] is None else tuple(rates), tuple(domains))


def _parse_entry(entry: str) -> tuple[str, float | None, str]:
    body, domain = _split_domain(entry)
    corpus, rate = _split_rate(body)
    return corpus, rate, domain or default_domain(corpus)


def _split_domain(entry: str) -> tuple[str, str | None]:
    """('corpus[:rate]', domain) of an entry; an '@' followed by more than a word is a path's."""
    body, at, word = entry.rpartition("@")
    if not (at and body and _DOMAIN_WORD.fullmatch(word)):
        return entry, None
    return body, _check_domain(word, f"entry {entry!r}")


def _split_rate(entry: str) -> tuple[str, float | None]:
    corpus, _, rate = entry.rpartition(":")
    if not corpus:
        return entry, None
    try:
        value = float(rate)
    except ValueError:
        return entry, None  # a ':' inside a path, not a rate
    if not value > 0:
        raise ConfigError(f"config.data.mixture entry {entry!r}: the rate must be positive.")
    return corpus, value


# ----------------------------------------------------------------------------- rates

def temperature_rates(sizes: np.ndarray, temperature: float) -> np.ndarray:
    """rate_i = size_i^(1/T) / sum_k size_k^(1/T)."""
    log_weights = np.log(np.asarray(sizes, np.float64)) / temperature
    weights = np.exp(log_weights - log_weights.max())  # shift: large sizes never overflow
    return weights / weights.sum()


def source_sizes(spec: MixtureSpec, train_fraction: float) -> np.ndarray:
    """Train-split characters of each source (vocabulary-independent, no tokenizing)."""
    return np.array([len(corpus_lib.split_text(s, "train", train_fraction))
                     for s in spec.sources], np.float64)


def mixture_rates(cfg) -> np.ndarray:
    """The sampling rate of each source of ``cfg.mixture`` (sums to 1); ``cfg`` is a
    ``DataConfig``, read by field so that ``lm.data.config`` can import this module."""
    spec = parse_mixture(cfg.mixture)
    if spec.rates is not None:
        rates = np.asarray(spec.rates, np.float64)
        return rates / rates.sum()
    return temperature_rates(source_sizes(spec, cfg.train_fraction), cfg.mixture_temperature)
