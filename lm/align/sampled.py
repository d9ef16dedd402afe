"""On-policy preference pairs: the starting model's own samples, ranked by a reward function.

``config.align.pairs='sampled'``: every question of the split is answered ``group_size`` times
at ``config.align.temperature`` by the run in ``config.init_from``; the best and the worst
answer under ``config.align.reward`` (a function) form a pair, and a question whose answers all
score the same gives none (counted as ``no_spread``). Unlike the synthetic pairs, the rejected
answer is one the model actually gives, so DPO lowers what the model does rather than pushing
down answers it already finds unlikely (which moves probability to answers nobody chose).
"""
from __future__ import annotations

import logging

from lm.align.config import AlignConfig
from lm.configlib import ConfigError
from lm.infer.decode import DecodeSettings

log = logging.getLogger("lm.align")
SAMPLING_SEED = 0x5A1D  # the pairs of a split are the same in every run of a seed


def sampled_preference_pairs(trainer, align: AlignConfig, split: str, count: int) -> tuple[list, dict]:
    """(pairs from ``count`` questions of ``split``, skip counts)."""
    from lm.align.preference import sampled_pairs
    from lm.instruct.synthetic import arithmetic_split

    kind, name = align.reward_kind
    if kind != "fn":
        raise ConfigError(f"config.align.pairs='sampled' ranks samples with a reward function; "
                          f"config.align.reward={align.reward!r} is not 'fn:<name>'")
    prompts = [i.prompt for i in arithmetic_split(split, count, align.digits, seed=trainer.exp.seed)]
    base = trainer.base()
    params, _ = base.restore()
    scorer = base.scorer(params, trainer.exp.data.batch_size)
    vocab = trainer.vocab
    seed = SAMPLING_SEED + trainer.exp.seed + (split != "train")

    def generate(texts: list[str], n: int) -> list[list[str]]:
        settings = DecodeSettings(max_new_tokens=align.max_new_tokens, temperature=align.temperature,
                                  top_k=align.top_k, top_p=align.top_p, stop_tokens=(vocab.eos_id,),
                                  seed=seed)
        repeated = [vocab.encode(t) for t in texts for _ in range(n)]
        answers = [vocab.decode(tokens).strip() for tokens in scorer.generate_tokens(repeated, settings)]
        return [answers[i * n:(i + 1) * n] for i in range(len(texts))]

    from lm.align.rewards import reward_function
    try:
        reward = reward_function(name)
    except ValueError as e:
        raise ConfigError(f"config.align.reward={align.reward!r}: {e}") from None
    pairs, skipped = sampled_pairs(prompts, generate, reward, align.group_size)
    log.info("%s: %d pairs from %d questions sampled %d times; %s", split, len(pairs),
             len(prompts), align.group_size, skipped.summary())
    return pairs, dict(skipped.as_dict())
