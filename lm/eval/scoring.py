"""The model side of lm-evaluation-harness's three request types, for a trained ``lm`` model.

  loglikelihood          (context, continuation) -> (sum of log p of the continuation tokens,
                         whether greedy decoding produces exactly those tokens)
  loglikelihood_rolling  document -> its total log-likelihood, every token scored once in
                         rolling windows (lm.eval.metrics.rolling_windows, prefix token EOS)
  generate_until         (context, {until, max_gen_toks, do_sample, temperature, top_k, top_p})
                         -> the continuation, cut before the first stop string

Both likelihood requests become (context ids, continuation ids) pairs that fit the window: a
decoder or LSTM reads context + continuation[:-1] and scores the last positions (the prefix
decoder attends bidirectionally over the context); an encoder-decoder encodes the context and
its decoder reads the start token + continuation[:-1]. Contexts are cut from the left. Pairs
are sorted by length, batched and right-padded to power-of-two lengths and row counts, and one
jitted function scores them, so few shapes compile. Right padding is invisible to causal
positions and the encoder-decoder's padding is masked by segment ids, so a pair scores the same
alone or in any batch.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.eval.metrics import rolling_windows
from lm.infer.decode import DecodeSettings, generate, generate_past_context, truncate_at_stop
from lm.models.decoding import GENERATING_ARCHS as SCORING_ARCHS
from lm.models.decoding import CausalDecoding, bucket, decoding_for, scheme_of
from lm.parallel.axes import (STANDARD_RULES, logical_to_spec, mesh_ways, outputs_to_host,
                             traced_on_mesh)
from lm.train.step import logits_fn, token_losses

GENERATION_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
DEFAULT_MAX_GEN_TOKS = 256  # lm-evaluation-harness's default
Pair = tuple[list[int], list[int]]


def check_scoring_arch(arch: str) -> None:
    """Refuses, with the reason, an architecture that cannot score or generate text."""
    scheme = scheme_of(arch)
    if scheme is None:
        raise ValueError(f"config.model.arch={arch!r} cannot be scored; use one of "
                         f"{', '.join(SCORING_ARCHS)}")
    if not scheme.can_generate:
        raise ValueError(f"config.model.arch={arch!r} {scheme.why_not}, so it cannot be evaluated "
                         f"on loglikelihood or generation requests; use one of "
                         f"{', '.join(SCORING_ARCHS)}")


class ModelScorer:
    """Answers loglikelihood, loglikelihood_rolling and generate_until requests for one model.

    ``context_len`` is the window in tokens (the training seq_len); Transformer windows are also
    capped by ``model_cfg.max_len``. ``batch_size`` rows are scored per call. With ``mesh``,
    scoring and generation are traced under ``axis_rules(mesh, rules)`` (``params`` may be
    sharded on it) and scoring batches have a multiple of the mesh's batch ways as rows.
    The scorer of a trained workdir is ``lm.eval.trained.scorer_from_workdir``.
    """

    def __init__(self, graphdef: nnx.GraphDef, params, model_cfg, vocab, context_len: int,
                 batch_size: int = 16, seed: int = 0, step: Optional[int] = None, *,
                 mesh=None, rules=None):
        check_scoring_arch(model_cfg.arch)
        if context_len < 1 or batch_size < 1:
            raise ValueError(f"context_len={context_len} and batch_size={batch_size} must be >= 1")
        self.graphdef = graphdef
        self.params = jax.device_put(params) if mesh is None else params
        self.model_cfg = model_cfg
        self.arch = model_cfg.arch
        self.decoding: CausalDecoding = decoding_for(model_cfg)
        self.vocab = vocab
        self.window = self.decoding.window(context_len)
        self.mesh = mesh
        self.rules = tuple(STANDARD_RULES if rules is None else rules)
        self.batch_size = batch_size
        self.seed = seed
        self.step = step

    # ------------------------------------------------------------------------- requests

    def loglikelihood(self, requests: Sequence) -> list[tuple[float, bool]]:
        """(log p(continuation | context) in nats, whether every continuation token is the argmax)
        for each (context, continuation) request."""
        pairs = []
        for index, request in enumerate(requests):
            context, continuation = _arguments(request)
            context_ids, continuation_ids = self._encode_pair(context, continuation)
            if not continuation_ids:
                raise ValueError(f"request {index}: the continuation {continuation!r} has no tokens")
            pairs.append((context_ids, continuation_ids))
        return self.loglikelihood_tokens(pairs)

    def loglikelihood_tokens(self, pairs: Sequence[Pair]) -> list[tuple[float, bool]]:
        """``loglikelihood`` of (context ids, continuation ids) pairs already tokenized (an empty
        context becomes EOS; long contexts are cut from the left)."""
        fitted = []
        for index, (context, continuation) in enumerate(pairs):
            if not len(continuation):
                raise ValueError(f"request {index}: the continuation has no tokens")
            context = [int(t) for t in context] or [self.vocab.eos_id]
            fitted.append(self._fit_window(context, [int(t) for t in continuation], index))
        return self._score_pairs(fitted)

    def loglikelihood_rolling(self, requests: Sequence) -> list[float]:
        """Total log-likelihood (nats) of each whole document, every token predicted once."""
        return self.loglikelihood_rolling_tokens(
            [self.vocab.encode(_arguments(request, 1)[0]) for request in requests])

    def loglikelihood_rolling_tokens(self, documents: Sequence[Sequence[int]]) -> list[float]:
        """``loglikelihood_rolling`` of documents already tokenized."""
        pairs, owners = [], []
        for index, tokens in enumerate(documents):
            for context, target in rolling_windows([int(t) for t in tokens], self.window,
                                                   prefix_token=self.vocab.eos_id):
                pairs.append((context, target))
                owners.append(index)
        totals = [0.0] * len(documents)
        for owner, (loglik, _) in zip(owners, self._score_pairs(pairs)):
            totals[owner] += loglik
        return totals

    def generate_until(self, requests: Sequence) -> list[str]:
        """The continuation of each (context, generation arguments) request."""
        groups: dict[DecodeSettings, list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
            context, arguments = _arguments(request)
            settings = generation_settings(arguments, self.vocab.eos_id, self.seed)
            settings = self._fit_generation(settings)
            prompt = self.vocab.encode(context) or [self.vocab.eos_id]
            groups.setdefault(settings, []).append((index, prompt))
        texts: list[str] = [""] * len(requests)
        for settings, items in groups.items():
            for index, tokens in self._generate_group(settings, items):
                texts[index] = truncate_at_stop(self.vocab.decode(tokens), settings.stop_strings)
        return texts

    def generate_tokens(self, prompts: Sequence[Sequence[int]], settings: DecodeSettings
                        ) -> list[list[int]]:
        """The new tokens continuing each tokenized prompt (an empty prompt starts from EOS);
        stop strings are left to the caller, which decodes the text."""
        settings = self._fit_generation(settings)
        items = [(index, [int(t) for t in prompt] or [self.vocab.eos_id])
                 for index, prompt in enumerate(prompts)]
        new_tokens: list[list[int]] = [[] for _ in prompts]
        for index, tokens in self._generate_group(settings, items):
            new_tokens[index] = [int(t) for t in tokens]
        return new_tokens

    # ------------------------------------------------------------------------- likelihood

    def _encode_pair(self, context: str, continuation: str) -> Pair:
        """Token ids as lm-evaluation-harness makes them: trailing spaces of the context move to
        the continuation; a decoder's continuation is what encoding the whole text adds to the
        context's tokens; an empty context becomes EOS."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self.vocab.encode(context)
        if self.decoding.continuation_alone:
            continuation_ids = self.vocab.encode(continuation)
        else:
            continuation_ids = self.vocab.encode(context + continuation)[len(context_ids):]
        return list(context_ids) or [self.vocab.eos_id], list(continuation_ids)

    def _fit_window(self, context: list[int], continuation: list[int], index: int) -> Pair:
        """Cuts the context from the left so that the pair fits the window."""
        if len(continuation) > self.window:
            raise ValueError(f"request {index}: the continuation has {len(continuation)} tokens, more "
                             f"than the window of {self.window}")
        return self.decoding.fit_window(context, continuation, self.window)

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[tuple[float, bool]]:
        """(summed log-probability, all greedy) of each pair's continuation, longest first in
        batches of ``batch_size``."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        results: list[Any] = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch, scored_bt = batch_layout(self.decoding, [pairs[i] for i in chunk], self.window,
                                            self.batch_size, batch_ways(self.mesh, self.rules))
            scores = _token_scores(self.graphdef, (self.mesh, self.rules), self.params, batch)
            logprob_bt, greedy_bt = outputs_to_host(scores)
            for row, index in enumerate(chunk):
                mask = scored_bt[row]
                results[index] = (float(np.sum(logprob_bt[row][mask], dtype=np.float64)),
                                  bool(np.all(greedy_bt[row][mask])))
        return results

    # ------------------------------------------------------------------------- generation

    def _fit_generation(self, settings: DecodeSettings) -> DecodeSettings:
        """The new tokens the architecture can give within the window (an encoder-decoder's
        decoder holds the start token and at most window - 1 new ones)."""
        new = self.decoding.fit_new_tokens(settings.max_new_tokens, self.window)
        return settings if new == settings.max_new_tokens else dataclasses.replace(
            settings, max_new_tokens=new)

    def _generate_group(self, settings: DecodeSettings, items: list[tuple[int, list[int]]]):
        """(request index, new tokens) for requests sharing ``settings``: prompts cut from the
        left to leave room for the new tokens, in batches; a decoder that refills its context,
        asked for more tokens than its window, continues past it one request at a time."""
        new, sharding = settings.max_new_tokens, {"mesh": self.mesh, "rules": self.rules}
        if self.decoding.refills_past_context and new >= self.window:
            for index, prompt in items:
                yield index, generate_past_context(self.graphdef, self.params, prompt, settings,
                                                   self.window, **sharding)
            return
        keep = self.decoding.prompt_room(new, self.window)
        items = sorted(((index, prompt[-keep:]) for index, prompt in items), key=lambda x: len(x[1]))
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            generation = generate(self.graphdef, self.params, [prompt for _, prompt in chunk],
                                  settings, context=self.window, **sharding)
            yield from zip((index for index, _ in chunk), generation.tokens)


def generation_settings(arguments: dict, eos_id: int, seed: int = 0) -> DecodeSettings:
    """DecodeSettings for lm-evaluation-harness generation arguments. Sampling happens when
    ``do_sample`` is true (temperature default 1) or, with ``do_sample`` unset, when the
    temperature is above 0; otherwise decoding is greedy. EOS always ends a continuation."""
    unknown = sorted(set(arguments) - set(GENERATION_KEYS))
    if unknown:
        raise ValueError(f"unsupported generation arguments {unknown}; supported: "
                         f"{', '.join(GENERATION_KEYS)}")
    until = arguments.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    do_sample = arguments.get("do_sample")
    temperature = arguments.get("temperature")
    if do_sample is False:
        temperature = 0.0
    elif do_sample:
        temperature = 1.0 if temperature is None else float(temperature)
    else:
        temperature = float(temperature or 0.0)
    return DecodeSettings(max_new_tokens=int(arguments.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
                          temperature=temperature, top_k=int(arguments.get("top_k") or 0),
                          top_p=float(arguments.get("top_p") or 1.0), stop_tokens=(eos_id,),
                          stop_strings=until, seed=seed)


def _arguments(request, count: int = 2) -> tuple:
    """A request's arguments: a tuple, or an lm-evaluation-harness Instance (its ``args``)."""
    args = request.args if hasattr(request, "args") else request
    args = (args,) if isinstance(args, str) else tuple(args)
    if len(args) != count:
        raise ValueError(f"expected {count} request argument(s), got {len(args)}: {args!r}")
    return args


# ----------------------------------------------------------------------------- batches

def batch_layout(decoding: CausalDecoding, pairs: Sequence[Pair], window: int, max_rows: int,
                 ways: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Host arrays of one scoring batch, right-padded to bucketed lengths and rows (a multiple
    of ``ways``; rows past the pairs are padding), and the [rows, length] mask of the positions
    whose targets are continuation tokens."""
    rows = bucket(len(pairs), max_rows)
    return decoding.score_layout(pairs, -(-rows // ways) * ways, window)


def batch_ways(mesh, rules) -> int:
    """How many ways the mesh splits the batch axis (1 without a mesh)."""
    if mesh is None:
        return 1
    return mesh_ways(mesh, logical_to_spec(("activation_batch",), rules, mesh)[0])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _token_scores(graphdef: nnx.GraphDef, sharding: tuple, params, batch: dict
                  ) -> tuple[jax.Array, jax.Array]:
    """Log-probability [B, T] of each target, and whether it is the argmax of its logits;
    traced under ``axis_rules`` when ``sharding`` = (mesh, rules) has a mesh."""
    mesh, rules = sharding
    return traced_on_mesh(mesh, rules, lambda: _scores(graphdef, params, batch))


def _scores(graphdef: nnx.GraphDef, params, batch: dict) -> tuple[jax.Array, jax.Array]:
    logits_btv = logits_fn(graphdef, params, batch).astype(jnp.float32)
    cross_entropy_bt, _ = token_losses(logits_btv, batch["targets"])
    return -cross_entropy_bt, jnp.argmax(logits_btv, axis=-1) == batch["targets"]
