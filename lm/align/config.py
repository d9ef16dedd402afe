"""``config.align``: the data, losses and rollouts of alignment tuning (modes reward, dpo, ppo,
grpo). One section serves the four modes; each reads the fields its docstring names."""
from __future__ import annotations

import dataclasses

from lm.configlib import ConfigError, Section, at_least, fraction, one_of, option, positive

LOSS_TYPES = ("sigmoid", "ipo")
KL_ESTIMATORS = ("k1", "k3")


@dataclasses.dataclass(frozen=True)
class AlignConfig(Section):
    where = "config.align"
    # Data (every mode).
    pairs: str = option("arithmetic", "preference pairs (reward, dpo): 'arithmetic', "
                        "'arithmetic_rationale' (synthetic: chosen right, rejected a dropped carry "
                        "or a digit off), 'sampled' (the init_from model's group_size answers "
                        "per question, best vs worst under config.align.reward) or "
                        "'jsonl:<path>' of {prompt, chosen, rejected} rows")
    prompts: str = option("arithmetic", "rollout prompts (ppo, grpo): 'arithmetic' questions of "
                          "the train split, or 'jsonl:<path>' of {prompt} rows")
    digits: int = option(2, "operand digits of the synthetic arithmetic", at_least(1))
    train_pairs: int = option(4000, "training pairs (or prompts) drawn", at_least(1))
    eval_pairs: int = option(200, "held-out pairs for loss and pair accuracy", at_least(1))
    eval_data: str = option("arithmetic", "held-out instances answered greedily before and after "
                            "(lm.instruct.datasets name)")
    eval_instances: int = option(200, "held-out questions for exact match", at_least(1))
    max_new_tokens: int = option(8, "answer length: exact match and rollouts", at_least(1))
    start_config: str = option("", "experiment file ('path[:variant]') trained into "
                               "config.init_from when it holds no checkpoint (the SFT run); "
                               "'' = refuse")
    reward_config: str = option("", "experiment file trained into the 'run:<workdir>' of "
                                "config.align.reward when it holds no checkpoint; '' = refuse")
    on_overflow: str = option("skip", "a pair longer than the context: skip (counted) | error",
                              one_of("skip", "error"))
    # DPO.
    beta: float = option(0.1, "dpo: strength of the implicit KL to the reference", positive())
    loss_type: str = option("sigmoid", "dpo: 'sigmoid' (Rafailov et al.) | 'ipo' (Azar et al.)",
                            one_of(*LOSS_TYPES))
    label_smoothing: float = option(0.0, "dpo (sigmoid): assumed share of flipped labels (cDPO)",
                                    fraction(low_open=False))
    rpo_alpha: float = option(0.0, "dpo: weight of the chosen responses' per-token NLL added to "
                              "the loss (RPO, Pang et al. 2024; TRL's rpo_alpha)", at_least(0))
    # Rewards and the KL penalty (ppo, grpo).
    reward: str = option("fn:arithmetic_exact", "'fn:<name>' of lm.align.rewards or "
                         "'run:<workdir>' of a config.mode='reward' run")
    kl_coef: float = option(0.05, "ppo: per-token KL penalty in the reward; grpo: k3 term in the "
                            "loss", at_least(0))
    kl_estimator: str = option("k1", "ppo's per-token KL in the reward: k1 | k3",
                               one_of(*KL_ESTIMATORS))
    kl_target: float = option(0.0, "ppo: adaptive coefficient aiming at this KL per sequence "
                              "(Ziegler et al.)", at_least(0, "0: fixed coefficient"))
    kl_horizon: int = option(10000, "ppo: the adaptive coefficient's horizon in samples",
                             at_least(1))
    # Rollouts and the clipped objective (ppo, grpo).
    temperature: float = option(1.0, "rollout sampling temperature (the log-probs use it too)",
                                positive())
    top_k: int = option(0, "rollouts sample from the k most likely tokens", at_least(0, "0: all"))
    top_p: float = option(1.0, "rollouts' nucleus mass", fraction(high_open=False))
    epochs: int = option(2, "optimisation passes over each rollout batch", at_least(1))
    minibatches: int = option(1, "minibatches per pass (config.data.batch_size divides by it)",
                              at_least(1))
    clip: float = option(0.2, "policy ratio clip epsilon", positive())
    group_size: int = option(8, "grpo: samples per prompt (config.data.batch_size rows = prompts "
                             "x group_size)", at_least(2))
    # PPO's value head and advantages.
    value_clip: float = option(0.2, "ppo: value prediction clip around the rollout's", positive())
    value_coef: float = option(0.1, "ppo: weight of the value loss", at_least(0))
    gamma: float = option(1.0, "ppo: discount", fraction(low_open=False, high_open=False))
    lam: float = option(0.95, "ppo: GAE lambda", fraction(low_open=False, high_open=False))
    whiten_advantages: bool = option(True, "ppo: advantages to zero mean, unit variance per batch")

    def check(self) -> None:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError(f"config.align.label_smoothing={self.label_smoothing} applies to "
                              f"loss_type='sigmoid' only (it is {self.loss_type!r})")
        if self.label_smoothing >= 0.5:
            raise ConfigError("config.align.label_smoothing must be below 0.5 (at 0.5 the labels "
                              "carry no information)")
        kind, _, rest = self.reward.partition(":")
        if kind not in ("fn", "run") or not rest:
            raise ConfigError(f"config.align.reward={self.reward!r} must be 'fn:<name>' (a reward "
                              f"function of lm.align.rewards) or 'run:<workdir>' (a reward model)")

    @property
    def reward_kind(self) -> tuple[str, str]:
        kind, _, rest = self.reward.partition(":")
        return kind, rest


def align_config(config) -> AlignConfig:
    return AlignConfig.from_config(config.get("align"))
