"""Mixtures: training rows sampled from several corpora at set rates, resumable exactly.

A mixture (``config.data.mixture``) is a registered name (``MIXTURES``, e.g. 'gutenberg') or a
comma-separated list of corpora with optional rates: 'shakespeare:0.7,milton:0.3' or
'shakespeare,milton'. Without rates they come from the sizes (train-split characters) with
temperature sampling: rate_i ∝ size_i^(1/T), T = ``config.data.mixture_temperature`` (T=1
follows the sizes, larger T flattens towards uniform). A corpus may be a 'tfds:' or 'hf:' dataset
(``lm.data.sources``).

Every source has a domain, 'general' (web pages, books, conversation) or 'specialized'
(multilingual, scientific, code), written after an '@': 'shakespeare:0.7@general,
code.jsonl:0.3@specialized' (or 'code.jsonl@specialized' without rates). Without one a source
takes its default: ``DEFAULT_DOMAINS`` for the embedded corpora (all three are books and reference
prose, so 'general'), 'general' for anything else. ``domain_rates`` gives each domain's share of
the rows, ``domain_eval_batches`` the validation batches grouped by domain.

Examples of a source: the disjoint windows of seq_len + 1 tokens of its train split (stride
seq_len), or its packed rows with ``packing=True``. A source is read in epochs: epoch e visits
every example once, in a permutation drawn from (seed, source, e), and a source that runs out
starts its next epoch with a new permutation.

Global row j of the stream picks its source with a counter-based uniform draw u_j = hash(seed,
j) against the cumulative rates, so the choice of any row needs no history. The k-th row given
to source i is example ``permutation(seed, i, k // N_i)[k % N_i]``; the iterator's state is the
batch index and how many examples each source has given (a small JSON dict). Every host draws
the sources of the whole global batch (B hashes) and builds only its own rows.

The backend of ``backend='array'`` with a mixture; without TensorFlow
(``lm.data.tasks.register_mixture`` registers the same rates with seqio). It imports only leaves:
mixture strings and rates come from ``lm.data.mixture_spec`` (so that ``DataConfig`` and the
seqio backend read them without this module), whose names (``MixtureSpec``, ``MIXTURES``,
``parse_mixture``, ``mixture_rates``, ...) are re-exported here; each source's arrays come from
``tokens`` and its rows from ``batches``.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools

import numpy as np

from lm.configlib import ConfigError
from lm.data import batches
from lm.data import windows as windows_lib
from lm.data.config import DataConfig
# Re-exported: the mixture format is documented above.
from lm.data.mixture_spec import (DEFAULT_DOMAINS, DOMAINS, MIXTURES, MixtureSpec,  # noqa: F401
                                  default_domain, mixture_rates, parse_mixture, source_sizes,
                                  temperature_rates)
from lm.data.tokens import packed_rows, split_tokens
from lm.data.windows import Batch

_SOURCE_CHOICE_KEY = 0x3D1C_E5A7  # folded into the seed for the per-row source draw
_UNIFORM_BITS = 53  # a float64 holds 53-bit integers exactly


# ----------------------------------------------------------------------------- domains

def source_domains(cfg: DataConfig) -> dict[str, str]:
    """The domain of each source of ``cfg.mixture``, by source name."""
    spec = parse_mixture(cfg.mixture)
    return dict(zip(spec.sources, spec.domains))


def domain_rates(cfg: DataConfig) -> dict[str, float]:
    """Each domain's share of the training rows (every domain of ``DOMAINS``; sums to 1)."""
    shares = dict.fromkeys(DOMAINS, 0.0)
    for domain, rate in zip(source_domains(cfg).values(), mixture_rates(cfg)):
        shares[domain] += float(rate)
    return shares


def source_config(cfg: DataConfig, source: str) -> DataConfig:
    """``cfg`` reading one source (keeps ``mixture``, so the vocabulary is the mixture's)."""
    return dataclasses.replace(cfg, corpus=source)


# ----------------------------------------------------------------------------- sources

class _Source:
    """The train examples of one source and its per-epoch permutations."""

    def __init__(self, cfg: DataConfig, seed: int, source_index: int):
        self._seed, self._source_index = seed, source_index
        if cfg.packing:
            self._targets_rt, self._positions_rt = packed_rows(cfg, "train")
            self.num_examples = len(self._targets_rt)
        else:
            tokens = split_tokens(cfg, "train")
            if len(tokens) < cfg.seq_len + 1:
                raise ConfigError(f"mixture source {cfg.corpus!r} has {len(tokens)} train tokens,"
                                  f" fewer than config.data.seq_len + 1 = {cfg.seq_len + 1}.")
            self._windows_kt = windows_lib.validation_windows(tokens, cfg.seq_len)
            self.num_examples = len(self._windows_kt)
        self._permutation = functools.lru_cache(maxsize=2)(self._epoch_permutation)

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        # A fresh generator per (seed, source, epoch): any epoch's order without the others.
        rng = np.random.default_rng([self._seed, self._source_index, epoch])
        return rng.permutation(self.num_examples)

    def examples(self, positions_n: np.ndarray) -> np.ndarray:
        """Example ids of the source's ``positions_n``-th draws (epochs of permutations)."""
        epochs_n, offsets_n = np.divmod(positions_n, self.num_examples)
        ids_n = np.empty_like(positions_n)
        for epoch in np.unique(epochs_n):
            in_epoch = epochs_n == epoch
            ids_n[in_epoch] = self._permutation(int(epoch))[offsets_n[in_epoch]]
        return ids_n

    def batch(self, ids_n: np.ndarray) -> Batch:
        if hasattr(self, "_windows_kt"):
            return windows_lib.windows_to_batch(self._windows_kt[ids_n])
        return windows_lib.packed_batch(self._targets_rt[ids_n], self._positions_rt[ids_n])


def choose_sources(seed: int, rows_n: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """The source of each global row: a counter-based uniform draw against cumulative rates."""
    uniform_n = windows_lib.hashed_ints(seed ^ _SOURCE_CHOICE_KEY, rows_n, 2**_UNIFORM_BITS)
    uniform_n = uniform_n / float(2**_UNIFORM_BITS)
    bounds = np.cumsum(rates)
    return np.minimum(np.searchsorted(bounds, uniform_n, side="right"), len(rates) - 1)


def draws_before(seed: int, num_rows: int, rates: np.ndarray, chunk: int = 1 << 20) -> list[int]:
    """How many of the first ``num_rows`` global rows each source gave (replays the draws)."""
    counts = np.zeros(len(rates), np.int64)
    for start in range(0, num_rows, chunk):
        rows_n = np.arange(start, min(num_rows, start + chunk), dtype=np.int64)
        counts += np.bincount(choose_sources(seed, rows_n, rates), minlength=len(rates))
    return counts.tolist()


# ----------------------------------------------------------------------------- iterator

class MixtureIterator:
    """Infinite training batches of a mixture (this host's rows), resumable from its state."""

    def __init__(self, cfg: DataConfig, seed: int, process_index: int = 0,
                 process_count: int = 1):
        self._cfg, self._seed = cfg, seed
        self.names = parse_mixture(cfg.mixture).sources
        self.rates = mixture_rates(cfg)
        self._sources = [_Source(source_config(cfg, name), seed, i)
                         for i, name in enumerate(self.names)]
        per_host = cfg.batch_size // process_count
        self._host_rows = slice(process_index * per_host, (process_index + 1) * per_host)
        self.batch_index = 0  # index of the next global batch
        self.consumed = [0] * len(self.names)  # examples each source has given so far

    def __iter__(self) -> "MixtureIterator":
        return self

    def __next__(self) -> Batch:
        rows_n = self.batch_index * self._cfg.batch_size + np.arange(self._cfg.batch_size)
        sources_n = choose_sources(self._seed, rows_n, self.rates)
        draws_n = self._draw_positions(sources_n)  # every host counts the whole global batch
        batch = self._build(sources_n[self._host_rows], draws_n[self._host_rows])
        self.batch_index += 1
        return batch

    def _draw_positions(self, sources_n: np.ndarray) -> np.ndarray:
        """Per row, how many earlier draws its source had; advances ``consumed``."""
        positions_n = np.zeros(len(sources_n), np.int64)
        for i in range(len(self._sources)):
            mine = sources_n == i
            positions_n[mine] = self.consumed[i] + np.arange(mine.sum())
            self.consumed[i] += int(mine.sum())
        return positions_n

    def _build(self, sources_n: np.ndarray, positions_n: np.ndarray) -> Batch:
        parts, order = [], []
        for i, source in enumerate(self._sources):
            rows = np.flatnonzero(sources_n == i)
            if len(rows):
                parts.append(source.batch(source.examples(positions_n[rows])))
                order.append(rows)
        # Row r of the concatenation came from row order[r]; argsort puts rows back in place.
        inverse = np.argsort(np.concatenate(order), kind="stable")
        return {key: np.concatenate([p[key] for p in parts])[inverse] for key in parts[0]}

    def get_state(self) -> dict:
        """JSON-serializable position; store it in the checkpoint."""
        return {"batch_index": self.batch_index, "seed": self._seed,
                "consumed": dict(zip(self.names, self.consumed))}

    def set_state(self, state: dict) -> None:
        if state.get("seed", self._seed) != self._seed:
            raise ValueError(f"data iterator state was saved with seed {state['seed']} but this "
                             f"iterator uses seed {self._seed}; resume with the same seed.")
        self.batch_index = int(state["batch_index"])
        if "consumed" not in state:  # e.g. a state saved by a single-corpus run: replay draws
            self.consumed = draws_before(self._seed, self.batch_index * self._cfg.batch_size,
                                         self.rates)
            return
        if set(state["consumed"]) != set(self.names):
            raise ValueError(f"data iterator state is of mixture sources "
                             f"{sorted(state['consumed'])}, not {sorted(self.names)}; resume "
                             f"with the same config.data.mixture.")
        self.consumed = [int(state["consumed"][name]) for name in self.names]


# ----------------------------------------------------------------------------- backend

def train_iterator(cfg: DataConfig, seed: int, process_index: int = 0,
                   process_count: int = 1) -> MixtureIterator:
    """Infinite training batches of the mixture: this host's rows of each."""
    return MixtureIterator(cfg, seed, process_index, process_count)


def eval_batches(cfg: DataConfig, process_index: int = 0, process_count: int = 1) -> list[Batch]:
    """``cfg.eval_batches`` of each source in turn, so that every source weighs the same."""
    per_source = source_eval_batches(cfg, process_index, process_count)
    return [batch for source_batches in per_source.values() for batch in source_batches]


def source_eval_batches(cfg: DataConfig, process_index: int = 0,
                        process_count: int = 1) -> dict[str, list[Batch]]:
    """Each source's ``cfg.eval_batches`` validation batches, by source name."""
    return {name: _source_eval_batches(source_config(cfg, name), process_index, process_count)
            for name in parse_mixture(cfg.mixture).sources}


def _source_eval_batches(cfg: DataConfig, process_index: int,
                         process_count: int) -> list[Batch]:
    """One source's validation batches: evenly spaced windows or packed rows of its split."""
    row_fn = batches.eval_rows(cfg, split_tokens, packed_rows)
    return batches.eval_batches(cfg, row_fn, process_index, process_count)


def domain_eval_batches(cfg: DataConfig, process_index: int = 0,
                        process_count: int = 1) -> dict[str, list[Batch]]:
    """The validation batches of each domain that has sources: its sources' batches in turn.

    Every source gives ``cfg.eval_batches`` batches, so a domain's token-weighted loss over them
    is its sources' ``eval/<source>/loss`` weighted by their evaluated tokens: the plain mean
    when rows are unpacked windows (each source then evaluates the same number of tokens).
    """
    domains = source_domains(cfg)
    grouped: dict[str, list[Batch]] = {}
    for name, source_batches in source_eval_batches(cfg, process_index, process_count).items():
        grouped.setdefault(domains[name], []).extend(source_batches)
    return grouped


# ----------------------------------------------------------------------------- report

def describe(cfg: DataConfig) -> str:
    """One line per source (rate, domain) and one line of the domains' shares."""
    domains, rates = source_domains(cfg), mixture_rates(cfg)
    width = max(map(len, domains))
    lines = [f"{name:<{width}}  rate {rate:.4f}  domain {domain}"
             for (name, domain), rate in zip(domains.items(), rates)]
    shares = domain_rates(cfg)
    lines.append("domains: " + ", ".join(f"{d} {shares[d]:.4f}" for d in DOMAINS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print a mixture's rates and domains.")
    parser.add_argument("--mixture", default="gutenberg",
                        help="registered name or 'corpus[:rate][@domain],...'")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="rates ∝ size^(1/T) when the mixture gives none")
    args = parser.parse_args(argv)
    print(describe(DataConfig(mixture=args.mixture, mixture_temperature=args.temperature)))


if __name__ == "__main__":
    main()
