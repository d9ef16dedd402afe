"""lm.align.losses: closed-form values, reference loops, sampling checks of the KL estimators,
and DPO/IPO against TRL's own DPOTrainer loss."""
import collections
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.align import losses

LN2 = math.log(2.0)


def test_token_and_sequence_logps_match_numpy():
    rng = np.random.default_rng(0)
    logits_btv = rng.normal(size=(2, 4, 5)).astype(np.float32)
    targets_bt = rng.integers(0, 5, size=(2, 4))
    weights_bt = np.array([[0, 1, 1, 0], [1, 1, 1, 1]], np.float32)
    logps_btv = logits_btv - np.log(np.exp(logits_btv).sum(-1, keepdims=True))
    expected_bt = np.take_along_axis(logps_btv, targets_bt[..., None], -1)[..., 0]
    got_bt = losses.token_logps(logits_btv, targets_bt)
    np.testing.assert_allclose(got_bt, expected_bt, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(losses.sequence_logps(got_bt, weights_bt), (expected_bt * weights_bt).sum(-1),
                               rtol=1e-6)
    # A -inf log-prob on a padding token (weight 0) does not leak into the sum.
    padded_bt = np.where(weights_bt > 0, expected_bt, -np.inf)
    np.testing.assert_allclose(losses.sequence_logps(padded_bt, weights_bt), (expected_bt * weights_bt).sum(-1),
                               rtol=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_dpo_with_policy_equal_reference_is_ln2(label_smoothing):
    logps_b = jnp.array([-3.0, -10.0, -0.5])
    loss, metrics = losses.dpo_loss(logps_b, logps_b - 1.0, logps_b, logps_b - 1.0, beta=0.1,
                                    label_smoothing=label_smoothing)
    assert abs(float(loss) - 0.693147) < 1e-6
    assert float(metrics["rewards/margins"]) == 0.0
    assert float(metrics["rewards/accuracies"]) == 0.0


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_with_policy_equal_reference(beta):
    logps_b = jnp.array([-3.0, -7.0])
    loss, _ = losses.dpo_loss(logps_b, logps_b, logps_b, logps_b, beta=beta, loss_type="ipo")
    np.testing.assert_allclose(float(loss), (1 / (2 * beta)) ** 2, rtol=1e-6)


def test_dpo_mask_drops_rows_and_unknown_type_raises():
    pc, pr, rc, rr = (jnp.array(v) for v in ([-1.0, -2.0, -9.0], [-3.0, -1.0, 0.0], [-2.0, -2.0, 5.0],
                                              [-2.5, -1.5, 1.0]))
    masked = losses.dpo_loss(pc, pr, rc, rr, 0.3, mask_b=jnp.array([1.0, 1.0, 0.0]))
    subset = losses.dpo_loss(pc[:2], pr[:2], rc[:2], rr[:2], 0.3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), masked, subset)
    with pytest.raises(ValueError, match="sigmoid.*ipo"):
        losses.dpo_loss(pc, pr, rc, rr, 0.3, loss_type="hinge")


def test_bradley_terry_equal_rewards_is_ln2():
    zeros_b = jnp.zeros(4)  # a zero reward head scores every response 0
    loss, metrics = losses.bradley_terry_loss(zeros_b, zeros_b)
    assert abs(float(loss) - LN2) < 1e-6
    assert float(metrics["reward/accuracy"]) == 0.0
    loss, metrics = losses.bradley_terry_loss(jnp.array([2.0, 0.0]), jnp.array([1.0, 1.0]))
    expected = 0.5 * (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["reward/accuracy"]) == 0.5
    assert float(metrics["reward/margin"]) == 0.0
    assert float(metrics["reward/chosen"]) == 1.0 and float(metrics["reward/rejected"]) == 1.0


# --- DPO against TRL ---------------------------------------------------------------------------
# TRL 1.16 has no standalone DPO loss function: the loss lives inside DPOTrainer._compute_loss,
# which runs the model, sums per-token log-probs over the completion and then applies the loss
# type. We call that method on a trainer made with object.__new__ (no __init__), setting by hand
# the attributes it reads, with a stand-in model whose "forward" returns fixed per-token log-probs
# (the sequence log-prob on the last position, 0 elsewhere) and with precomputed reference
# log-probs passed in the batch, as TRL's precompute_ref_log_probs path does.
# TRL 1.16's "sigmoid" ignores label_smoothing; its cDPO formula -(1-ls) logsigmoid(beta h)
# - ls logsigmoid(-beta h) is the "aot" loss, which sorts h over the batch: on one pair at a time
# sorting is the identity, so "aot" on single pairs is exactly cDPO.

class _FixedLogpsModel:
    """Stands in for the policy: returns the given per-token log-probs whatever the input."""

    def __init__(self, log_probs):
        self.log_probs = log_probs
        self.training = False

    def __call__(self, **unused_inputs):
        zeros = self.log_probs * 0  # entropy, mean logits and top-1 hits only feed TRL's logging
        return types.SimpleNamespace(log_probs=self.log_probs, entropy=zeros, mean_logits=zeros,
                                     is_top1=zeros > 0)


def _trl_dpo(pc, pr, rc, rr, beta, loss_type, label_smoothing=0.0, lengths=None):
    """TRL's loss and metrics for sequence log-probs [B] (float64); ``lengths`` are the completion
    lengths TRL's IPO divides by (1 when None)."""
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    pairs = len(pc)
    lengths = np.ones(2 * pairs, int) if lengths is None else np.asarray(lengths)
    seq_len = int(lengths.max()) + 1  # one prompt token, then the completion
    log_probs = np.zeros((2 * pairs, seq_len - 1))
    log_probs[:, -1] = np.concatenate([pc, pr])  # the batch is [chosen..., rejected...]
    completion_mask = (np.arange(seq_len)[None, :] >= seq_len - lengths[:, None]).astype(np.int64)
    trainer = object.__new__(trl.DPOTrainer)
    trainer.__dict__.update(
        beta=beta, loss_types=[loss_type], loss_weights=[1.0], label_smoothing=label_smoothing,
        ld_alpha=None, f_divergence_type="reverse_kl", precompute_ref_logps=True, use_weighting=False,
        aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                          gather_for_metrics=lambda x: x),
        model=_FixedLogpsModel(torch.from_numpy(log_probs)))
    inputs = {"input_ids": torch.zeros((2 * pairs, seq_len), dtype=torch.long),
              "attention_mask": torch.ones((2 * pairs, seq_len), dtype=torch.long),
              "completion_mask": torch.from_numpy(completion_mask),
              "ref_chosen_logps": torch.from_numpy(np.asarray(rc)),
              "ref_rejected_logps": torch.from_numpy(np.asarray(rr))}
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items() if k.startswith("rewards/")}
    return float(loss), metrics


def _random_logps(seed, pairs=6):
    """Four [pairs] float64 arrays of sequence log-probs, rounded to float32-representable values so
    that the comparison measures the loss math, not the rounding of the inputs."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-40.0, -2.0, size=pairs).astype(np.float32).astype(np.float64) for _ in range(4)]


def _assert_matches_trl(ours, theirs):
    loss, metrics = ours
    trl_loss, trl_metrics = theirs
    np.testing.assert_allclose(float(loss), trl_loss, rtol=1e-6, atol=1e-6)
    assert set(trl_metrics) == set(metrics)
    for name, value in trl_metrics.items():
        np.testing.assert_allclose(float(metrics[name]), value, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_matches_trl(beta, loss_type):
    pytest.importorskip("trl")
    logps = _random_logps(seed=int(beta * 100))
    _assert_matches_trl(losses.dpo_loss(*logps, beta=beta, loss_type=loss_type),
                        _trl_dpo(*logps, beta=beta, loss_type=loss_type))


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
def test_conservative_dpo_matches_trl(beta, label_smoothing):
    pytest.importorskip("trl")
    logps = _random_logps(seed=7, pairs=3)
    for pair in range(3):  # TRL's "aot" sorts over the batch: one pair at a time it is cDPO
        single = [x[pair:pair + 1] for x in logps]
        _assert_matches_trl(losses.dpo_loss(*single, beta=beta, label_smoothing=label_smoothing),
                            _trl_dpo(*single, beta=beta, loss_type="aot", label_smoothing=label_smoothing))


def test_ipo_matches_trl_length_normalised():
    """TRL's IPO divides each log-ratio by its completion length; ours takes the log-probs as given,
    so passing per-token means gives TRL's loss."""
    pytest.importorskip("trl")
    pc, pr, rc, rr = _random_logps(seed=3, pairs=4)
    lengths = np.array([3, 5, 1, 8, 2, 7, 4, 6])  # chosen rows, then rejected rows
    chosen_len, rejected_len = lengths[:4], lengths[4:]
    trl_loss, _ = _trl_dpo(pc, pr, rc, rr, beta=0.1, loss_type="ipo", lengths=lengths)
    loss, _ = losses.dpo_loss(pc / chosen_len, pr / rejected_len, rc / chosen_len, rr / rejected_len, beta=0.1,
                              loss_type="ipo")
    np.testing.assert_allclose(float(loss), trl_loss, rtol=1e-6)


# --- KL estimators -----------------------------------------------------------------------------

def test_k3_is_non_negative_and_estimators_are_exact_formulas():
    rng = np.random.default_rng(1)
    logp, ref = rng.normal(scale=5.0, size=(2, 1000)).astype(np.float32)
    assert float(jnp.min(losses.kl_per_token(logp, ref, "k3"))) >= 0.0
    np.testing.assert_allclose(losses.kl_per_token(logp, ref, "k1"), logp - ref, rtol=1e-6)
    np.testing.assert_allclose(losses.kl_per_token(logp, ref, "k2"), 0.5 * (logp - ref) ** 2, rtol=1e-5)
    # Near d = 0, k3 ~ d^2 / 2 = 5e-9; exp(d) - 1 - d in float32 would be off by ~1e-7 (an ulp of 1).
    small = np.array([-1e-4, 1e-4], np.float32)
    np.testing.assert_allclose(losses.kl_per_token(small, 0 * small, "k3"), small ** 2 / 2, rtol=1e-2)
    with pytest.raises(ValueError, match="k1"):
        losses.kl_per_token(logp, ref, "k4")


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_kl_estimators_match_exact_kl_on_samples(estimator):
    """Both k1 and k3 are unbiased estimators of KL(p || q) for x ~ p. With N samples their mean is
    within 5 standard errors (std of the estimator under p, computed exactly, / sqrt(N)) of the
    exact KL except with probability ~6e-7; the seed is fixed, so the test is deterministic."""
    p = np.array([0.5, 0.25, 0.15, 0.1])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    exact_kl = float(np.sum(p * np.log(p / q)))
    per_category = np.asarray(losses.kl_per_token(np.log(p), np.log(q), estimator), np.float64)
    np.testing.assert_allclose(np.sum(p * per_category), exact_kl, rtol=1e-6)  # unbiased: E_p = KL
    standard_error = math.sqrt(np.sum(p * (per_category - exact_kl) ** 2) / 200_000)
    samples = np.random.default_rng(2).choice(4, size=200_000, p=p)
    estimate = losses.kl_per_token(np.log(p)[samples], np.log(q)[samples], estimator)
    assert abs(float(jnp.mean(estimate)) - exact_kl) < 5 * standard_error
    assert standard_error < 0.01 * exact_kl  # the tolerance is tight enough to mean something


# --- PPO ---------------------------------------------------------------------------------------

def test_ppo_rewards_put_score_on_last_response_token():
    kl_bt = jnp.array([[9.0, 1.0, 2.0, 9.0], [9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 0.5, 0.5]])
    mask_bt = jnp.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 1]], jnp.float32)
    rewards_bt = losses.ppo_rewards(jnp.array([10.0, 7.0, -1.0]), kl_bt, mask_bt, kl_coef=0.1)
    np.testing.assert_allclose(rewards_bt, [[0, -0.1, 9.8, 0], [0, 0, 0, 0], [0, 0, -0.05, -1.05]], rtol=1e-6)


def _reference_gae(rewards, values, start, end, gamma, lam):
    """Plain loop over one row whose response is positions [start, end)."""
    advantages = np.zeros(len(rewards))
    next_advantage = next_value = 0.0
    for t in reversed(range(start, end)):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        next_value = values[t]
        advantages[t] = next_advantage
    returns = np.where(np.arange(len(rewards)) >= start, advantages + values, 0.0)
    returns[end:] = 0.0
    return advantages, returns


def test_gae_matches_reference_loop():
    rng = np.random.default_rng(4)
    gamma, lam, seq_len = 0.97, 0.9, 12
    spans = [(2, 12), (5, 9), (0, 3), (7, 8), (4, 4), (3, 11)]  # prompt length, response end
    rewards_bt = rng.normal(size=(len(spans), seq_len)).astype(np.float32)
    values_bt = rng.normal(size=(len(spans), seq_len)).astype(np.float32)
    mask_bt = np.array([[start <= t < end for t in range(seq_len)] for start, end in spans], np.float32)
    advantages_bt, returns_bt = jax.jit(losses.gae, static_argnums=(3, 4))(rewards_bt, values_bt, mask_bt,
                                                                           gamma, lam)
    for row, (start, end) in enumerate(spans):
        expected_advantages, expected_returns = _reference_gae(rewards_bt[row].astype(np.float64),
                                                               values_bt[row].astype(np.float64),
                                                               start, end, gamma, lam)
        np.testing.assert_allclose(advantages_bt[row], expected_advantages, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(returns_bt[row], expected_returns, rtol=1e-5, atol=1e-5)


def test_whiten_gives_zero_mean_unit_variance_on_mask():
    rng = np.random.default_rng(5)
    x_bt = rng.normal(loc=3.0, scale=4.0, size=(3, 10)).astype(np.float32)
    mask_bt = (rng.uniform(size=(3, 10)) < 0.6).astype(np.float32)
    x_bt[mask_bt == 0] = 1e4  # values outside the mask must not move the statistics
    whitened = np.asarray(losses.whiten(x_bt, mask_bt))[mask_bt > 0]
    np.testing.assert_allclose(whitened.mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(whitened.var(), 1.0, rtol=1e-5)
    unshifted = np.asarray(losses.whiten(x_bt, mask_bt, shift_mean=False))[mask_bt > 0]
    np.testing.assert_allclose(unshifted.mean(), x_bt[mask_bt > 0].mean(), rtol=1e-5)


def test_ppo_policy_loss_at_old_policy_and_with_neg_inf_logp():
    rng = np.random.default_rng(6)
    logp_bt = np.log(rng.uniform(0.05, 1.0, size=(2, 5))).astype(np.float32)
    advantages_bt = rng.normal(size=(2, 5)).astype(np.float32)
    mask_bt = np.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.float32)
    loss, metrics = jax.jit(losses.ppo_policy_loss)(logp_bt, logp_bt, advantages_bt, mask_bt, 0.2)
    assert float(metrics["ppo/ratio"]) == 1.0
    assert float(metrics["ppo/clip_fraction"]) == 0.0
    assert float(metrics["ppo/approx_kl"]) == 0.0
    np.testing.assert_allclose(float(loss), -advantages_bt[mask_bt > 0].mean(), rtol=1e-6)

    # A token whose probability became 0 (outside a top-k mask), once inside and once outside the mask.
    new_logp_bt = logp_bt.copy()
    new_logp_bt[0, 2] = -np.inf
    new_logp_bt[1, 3] = -np.inf
    value, grad_bt = jax.value_and_grad(lambda lp: losses.ppo_policy_loss(
        lp, logp_bt, advantages_bt, mask_bt, 0.2)[0])(jnp.asarray(new_logp_bt))
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad_bt))
    assert float(grad_bt[0, 2]) == 0.0 and float(grad_bt[1, 3]) == 0.0
    # The log-ratio is clamped to -20 for the metrics too: approx_kl = 0.5 * 20^2 / 5 masked tokens.
    _, metrics = losses.ppo_policy_loss(new_logp_bt, logp_bt, advantages_bt, mask_bt, 0.2)
    np.testing.assert_allclose(float(metrics["ppo/approx_kl"]), 40.0, rtol=1e-6)
    # Untouched masked tokens keep the unclipped gradient -A / count (ratio 1).
    np.testing.assert_allclose(grad_bt[0, 1], -advantages_bt[0, 1] / 5, rtol=1e-6)


def test_value_loss_with_clipping():
    values_bt = jnp.array([[1.0, 2.0, 0.0]])
    old_values_bt = jnp.array([[0.0, 2.0, 0.5]])
    returns_bt = jnp.array([[3.0, 1.0, 0.0]])
    mask_bt = jnp.array([[1.0, 1.0, 0.0]])
    loss, metrics = losses.value_loss(values_bt, old_values_bt, returns_bt, mask_bt, clip=0.2)
    # Token 0: clipped value 0.2, (0.2 - 3)^2 = 7.84 > (1 - 3)^2 = 4; token 1: both 1; token 2 masked.
    np.testing.assert_allclose(float(loss), 0.5 * (7.84 + 1.0) / 2, rtol=1e-6)
    assert float(metrics["ppo/value_clip_fraction"]) == 0.5


def test_entropy_uniform_and_masked_vocabulary():
    logits_btv = jnp.array([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -jnp.inf, -jnp.inf]]])
    np.testing.assert_allclose(float(losses.entropy(logits_btv, jnp.array([[1.0, 0.0]]))), math.log(4), rtol=1e-6)
    np.testing.assert_allclose(float(losses.entropy(logits_btv, jnp.array([[0.0, 1.0]]))), math.log(2), rtol=1e-6)
    grad_btv = jax.grad(lambda x: losses.entropy(x, jnp.ones((1, 2))))(logits_btv)
    assert np.all(np.isfinite(grad_btv))


def test_all_zero_mask_gives_zero_not_nan():
    zeros_bt, mask_bt = jnp.zeros((2, 3)), jnp.zeros((2, 3))
    loss, metrics = losses.ppo_policy_loss(zeros_bt, zeros_bt, zeros_bt + 1, mask_bt, 0.2)
    assert float(loss) == 0.0 and float(metrics["ppo/ratio"]) == 0.0
    assert float(losses.value_loss(zeros_bt, zeros_bt, zeros_bt + 1, mask_bt, 0.2)[0]) == 0.0
    assert float(losses.grpo_loss(zeros_bt, zeros_bt, zeros_bt, jnp.ones(2), mask_bt, 0.2, 0.1)[0]) == 0.0
    assert float(losses.entropy(jnp.zeros((2, 3, 4)), mask_bt)) == 0.0
    assert np.all(np.isfinite(losses.whiten(zeros_bt, mask_bt)))


def test_adaptive_kl_coef():
    # error = clip(12 / 6 - 1, -0.2, 0.2) = 0.2; 0.1 * (1 + 0.2 * 256 / 10000)
    np.testing.assert_allclose(losses.adaptive_kl_coef(0.1, 12.0, 6.0, 10000, 256), 0.100512, rtol=1e-12)
    # error = 5.4 / 6 - 1 = -0.1: 0.1 * (1 - 0.1 * 0.0256)
    np.testing.assert_allclose(losses.adaptive_kl_coef(0.1, 5.4, 6.0, 10000, 256), 0.099744, rtol=1e-12)


# --- GRPO --------------------------------------------------------------------------------------

def test_group_advantages_hand_computed():
    rewards_b = jnp.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 0.0, 1.0, 0.1, 0.1, 0.1])
    advantages_b, zero_spread_fraction = losses.group_advantages(rewards_b, group_size=3)
    std_1 = math.sqrt(2 / 3)  # population std of (1, 2, 3)
    std_3 = math.sqrt(2 / 9)  # of (0, 0, 1)
    expected = [-1 / (std_1 + 1e-4), 0.0, 1 / (std_1 + 1e-4), 0, 0, 0,
                -1 / 3 / (std_3 + 1e-4), -1 / 3 / (std_3 + 1e-4), 2 / 3 / (std_3 + 1e-4), 0, 0, 0]
    np.testing.assert_allclose(advantages_b, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(advantages_b)[9:] == 0.0)  # equal rewards give exactly 0
    assert float(zero_spread_fraction) == 0.5
    with pytest.raises(ValueError, match="multiple"):
        losses.group_advantages(jnp.zeros(7), group_size=3)


def test_grpo_loss_at_old_and_reference_policy_averages_per_sequence():
    logp_bt = jnp.log(jnp.full((4, 4), 0.3))
    advantages_b = jnp.array([1.0, -2.0, 0.5, 3.0])
    # Response lengths 1, 3, 2, 0: a per-token mean would give -(1 - 6 + 1) / 6 = 2/3, not 1/6.
    mask_bt = jnp.array([[1, 0, 0, 0], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], jnp.float32)
    loss, metrics = losses.grpo_loss(logp_bt, logp_bt, logp_bt, advantages_b, mask_bt, clip=0.2, kl_coef=0.04)
    np.testing.assert_allclose(float(loss), -(1.0 - 2.0 + 0.5) / 3, rtol=1e-6)
    assert float(metrics["grpo/kl"]) == 0.0
    assert float(metrics["grpo/ratio"]) == 1.0
    assert float(metrics["grpo/clip_fraction"]) == 0.0


def test_grpo_loss_kl_and_clipping_hand_computed():
    # One token: policy 0.5, old 0.25 (ratio 2, clipped to 1.2 for A = 1), reference 0.25.
    logp, old, ref = (jnp.log(jnp.array([[v]])) for v in (0.5, 0.25, 0.25))
    loss, metrics = losses.grpo_loss(logp, old, ref, jnp.array([1.0]), jnp.ones((1, 1)), clip=0.2, kl_coef=0.1)
    k3 = 0.5 - 1 - math.log(0.5)  # q/p - 1 - log(q/p) with q/p = 0.5
    np.testing.assert_allclose(float(metrics["grpo/kl"]), k3, rtol=1e-6)
    np.testing.assert_allclose(float(loss), -1.2 + 0.1 * k3, rtol=1e-6)
    assert float(metrics["grpo/clip_fraction"]) == 1.0
    np.testing.assert_allclose(float(metrics["grpo/ratio"]), 2.0, rtol=1e-6)
