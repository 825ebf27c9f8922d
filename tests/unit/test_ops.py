"""Hand-computed checks of rlhfkit.ops: the arithmetic is written next to every number."""

import math

import numpy as np
import pytest
import torch

from rlhfkit.ops import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    last_token_index,
    log1mexp,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    rloo_advantages,
    truncate_after_eos,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])  # kept values: 1, 2, 4


# ---------------------------------------------------------------------------- masked statistics


def test_masked_sum_and_mean_by_hand():
    # sum 1+2+4 = 7 ; mean 7/3 ; per row: sums [1+2, 4] = [3, 4], means [1.5, 4]
    assert masked_sum(X, M).item() == 7.0
    torch.testing.assert_close(masked_mean(X, M), torch.tensor(7 / 3))
    torch.testing.assert_close(masked_sum(X, M, dim=1), torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(masked_mean(X, M, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_stats_ignore_nan_and_inf_in_padding():
    x = X.clone()
    x[0, 2], x[1, 1] = float("nan"), float("-inf")  # both sit under mask 0
    assert masked_sum(x, M).item() == 7.0
    torch.testing.assert_close(masked_mean(x, M, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_mean_of_an_empty_row_is_zero():
    # row 1 keeps nothing: count clamped to 1, sum 0 → 0 (not NaN)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    torch.testing.assert_close(masked_mean(X, mask, dim=1), torch.tensor([2.0, 0.0]))


def test_masked_var_by_hand():
    # kept 1, 2, 4: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9
    # population 42/9 / 3 = 1.555556 ; unbiased 42/9 / 2 = 2.333333
    torch.testing.assert_close(masked_var(X, M, unbiased=False), torch.tensor(42 / 27))
    torch.testing.assert_close(masked_var(X, M), torch.tensor(42 / 18))
    torch.testing.assert_close(masked_var(X, M), torch.tensor([1.0, 2.0, 4.0]).var())


def test_masked_var_needs_two_values_when_unbiased():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_masked_whiten_by_hand():
    # (1 − 7/3)/sqrt(7/3 + 1e-8) = −0.872872 ; (4 − 7/3)/sqrt(7/3) = 1.091089 ; masked → 0
    w = masked_whiten(X, M)
    torch.testing.assert_close(w[0, 0], torch.tensor(-0.8728716), atol=1e-6, rtol=0)
    torch.testing.assert_close(w[1, 0], torch.tensor(1.0910894), atol=1e-6, rtol=0)
    assert w[0, 2].item() == 0.0 and w[1, 2].item() == 0.0
    # identity: whitened kept values have mean 0 and unbiased variance 1
    torch.testing.assert_close(masked_mean(w, M), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_var(w, M), torch.tensor(1.0), atol=1e-6, rtol=0)


def test_masked_whiten_without_shift_keeps_the_mean():
    # scale only: mean stays 7/3, first value 7/3 − 0.872872 = 1.460461
    w = masked_whiten(X, M, shift_mean=False)
    torch.testing.assert_close(masked_mean(w, M), torch.tensor(7 / 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(w[0, 0], torch.tensor(7 / 3 - 0.8728716), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- log-probs, entropy


def test_logprobs_from_logits_by_hand():
    # log softmax([1, 2, 3])[2] = 3 − log(e + e² + e³) = 3 − 3.407606 = −0.407606
    # log softmax([1, 2, 3])[0] = 1 − 3.407606 = −2.407606
    logits = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
    out = logprobs_from_logits(logits, torch.tensor([[2, 0]]))
    torch.testing.assert_close(out, torch.tensor([[-0.4076060, -2.4076060]]), atol=1e-6, rtol=0)


def test_logprobs_from_logits_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    labels = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), ref, atol=1e-6, rtol=0)
    # bf16 logits: float32 result, equal to the float32 computation on the same (rounded) values
    low = logits.bfloat16()
    out = logprobs_from_logits(low, labels)
    assert out.dtype == torch.float32
    ref_low = torch.log_softmax(low.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(out, ref_low, atol=1e-6, rtol=0)


def test_logprobs_from_logits_gradient_is_onehot_minus_softmax():
    # d log p(y)/d logits = onehot(y) − softmax(logits): for [1, 2, 3], y = 2 →
    # [−e/S, −e²/S, 1 − e³/S] with S = e + e² + e³ = 30.19287 → [−0.090031, −0.244728, 0.334759]
    logits = torch.tensor([[[1.0, 2.0, 3.0]]], requires_grad=True)
    logprobs_from_logits(logits, torch.tensor([[2]])).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.0900306, -0.2447285, 0.3347590]]]), atol=1e-6, rtol=0)


def test_logprobs_from_logits_accepts_ignore_index():
    # −100 is gathered as token 0 (caller masks it): log softmax([1, 2, 3])[0] = −2.407606
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    torch.testing.assert_close(
        logprobs_from_logits(logits, torch.tensor([[-100]])), torch.tensor([[-2.4076060]]), atol=1e-6, rtol=0
    )


def test_entropy_from_logits_by_hand():
    # uniform over 4 → log 4 = 1.386294 ; logits [0, log 3] → p = [1/4, 3/4]
    # H = −(¼ log ¼ + ¾ log ¾) = 0.346574 + 0.215762 = 0.562335
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[1.3862944, 0.5623351]]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- EOS handling


def test_truncate_after_eos_by_hand():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])  # eos = 2, pad = 0
    out = truncate_after_eos(ids, eos_token_id=2, pad_token_id=0)
    assert out.ids.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]  # first EOS kept, rest padded
    assert out.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert out.has_eos.tolist() == [True, False, True]
    ids2, mask2, has_eos2 = out  # unpacks as a 3-tuple
    assert torch.equal(ids2, out.ids) and torch.equal(mask2, out.mask) and torch.equal(has_eos2, out.has_eos)


def test_truncate_after_any_of_several_stop_tokens():
    # stop ids {2 (<eos>), 3 (<end_of_turn>)}: row 0 ends at its 3, row 1 at its 2, row 2 runs on
    ids = torch.tensor([[5, 3, 7, 2], [5, 2, 3, 8], [5, 6, 7, 8]])
    out = truncate_after_eos(ids, eos_token_id=[2, 3], pad_token_id=0)
    assert out.ids.tolist() == [[5, 3, 0, 0], [5, 2, 0, 0], [5, 6, 7, 8]]
    assert out.mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert out.has_eos.tolist() == [True, True, False]


def test_stop_tokens_are_the_tokenizers_eos_and_the_generation_configs():
    from types import SimpleNamespace

    from rlhfkit.models.loading import stop_token_ids

    tok = SimpleNamespace(eos_token_id=1)
    gemma_like = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[1, 107]))
    assert stop_token_ids(gemma_like, tok) == [1, 107]
    assert stop_token_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=1)), tok) == [1]
    assert stop_token_ids(SimpleNamespace(), tok) == [1]


def test_truncate_after_eos_when_pad_is_eos():
    # GPT-2 style pad == eos == 2: the first 2 is kept (mask 1), the following 2s are padding (mask 0)
    ids = torch.tensor([[4, 2, 2, 2], [4, 4, 4, 4]])
    out = truncate_after_eos(ids, eos_token_id=2, pad_token_id=2)
    assert out.ids.tolist() == [[4, 2, 2, 2], [4, 4, 4, 4]]
    assert out.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out.has_eos.tolist() == [True, False]


def test_last_token_index_by_hand():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 3, 3, 0]  # right-, un-, left-padded, single token
    with pytest.raises(ValueError, match="no unmasked token"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


# ---------------------------------------------------------------------------- GAE


def test_gae_by_hand():
    # γ = 0.9, λ = 0.8, mask [1, 1, 0]: position 2 is padding (its 5 and 9 must be ignored)
    # t=1 (last): δ1 = 1 + 0.9·0 − 0.2 = 0.8 → A1 = 0.8 (no bootstrap after the last token)
    # t=0: δ0 = 0 + 0.9·0.2 − 0.5 = −0.32 → A0 = −0.32 + 0.9·0.8·0.8 = 0.256
    # returns: R0 = 0.256 + 0.5 = 0.756 ; R1 = 0.8 + 0.2 = 1.0
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 9.0]])
    adv, ret = gae(rewards, values, torch.tensor([[1, 1, 0]]), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.256, 0.8, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[0.756, 1.0, 0.0]]), atol=1e-6, rtol=0)


def _gae_loop(rewards, values, lengths, gamma, lam):
    """Naive reference: one row at a time, V = 0 after the last real token."""
    B, T = rewards.shape
    adv = np.zeros((B, T))
    for b in range(B):
        last = 0.0
        for t in reversed(range(lengths[b])):
            next_v = values[b, t + 1] if t + 1 < lengths[b] else 0.0
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
    ret = adv + values * (np.arange(T)[None, :] < np.array(lengths)[:, None])
    return adv, ret


def test_gae_matches_a_python_loop_with_ragged_lengths():
    g = torch.Generator().manual_seed(1)
    lengths = [6, 3, 1, 5]
    rewards = torch.randn(4, 6, generator=g, dtype=torch.float64)
    values = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]).long()
    adv, ret = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    ref_adv, ref_ret = _gae_loop(rewards.numpy(), values.numpy(), lengths, 0.95, 0.9)
    np.testing.assert_allclose(adv.numpy(), ref_adv, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), ref_ret, atol=1e-12)


def test_gae_left_padded_row_equals_the_right_padded_one_shifted():
    # the hand example above, left-padded: mask [0, 1, 1] → advantages [0, 0.256, 0.8], returns [0, 0.756, 1.0]
    rewards = torch.tensor([[5.0, 0.0, 1.0]])
    values = torch.tensor([[9.0, 0.5, 0.2]])
    adv, ret = gae(rewards, values, torch.tensor([[0, 1, 1]]), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.256, 0.8]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.756, 1.0]]), atol=1e-6, rtol=0)


def test_gae_with_gamma_lambda_one_gives_monte_carlo_returns():
    # γ = λ = 1: R_t = Σ_{s≥t} r_s whatever the values ; row [1, 2, 3 | pad] → [6, 5, 3, 0]
    rewards = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    values = torch.tensor([[0.3, -0.7, 2.0, 50.0]])
    adv, ret = gae(rewards, values, torch.tensor([[1, 1, 1, 0]]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[6.0, 5.0, 3.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[5.7, 5.7, 1.0, 0.0]]))  # R − V


# ---------------------------------------------------------------------------- KL estimators

P = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
Q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
# KL(p‖q) = .5·log 2.5 + .3·log .6 + .2·log(2/3) = 0.458145 − 0.153248 − 0.081093 = 0.223805
KL_PQ = 0.22380465718564746


def test_k1_and_k3_are_unbiased_on_a_categorical():
    # Σ_x p(x)·k1(x) = Σ p log(p/q) = KL ; Σ p·k3 = Σ q − 1 + KL = KL (support sums, no sampling)
    assert torch.allclose((P * kl_k1(P.log(), Q.log())).sum(), torch.tensor(KL_PQ, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((P * kl_k3(P.log(), Q.log())).sum(), torch.tensor(KL_PQ, dtype=torch.float64), atol=1e-12)


def test_kl_estimators_by_hand_and_zero_at_equal_distributions():
    # k2 at x=0: ½ (log .5 − log .2)² = ½ · 0.916291² = 0.419794
    assert kl_k2(P.log(), Q.log())[0].item() == pytest.approx(0.4197943526592374, abs=1e-12)
    # k3 at x=0: r = q/p = 0.4 → 0.4 − 1 − log 0.4 = −0.6 + 0.916291 = 0.316291
    assert kl_k3(P.log(), Q.log())[0].item() == pytest.approx(-0.6 + math.log(2.5), abs=1e-12)
    for name, fn in KL_ESTIMATORS.items():
        assert torch.equal(fn(P.log(), P.log()), torch.zeros(3, dtype=torch.float64)), name
        assert torch.equal(kl_estimate(P.log(), Q.log(), estimator=name), fn(P.log(), Q.log()))
    assert sorted(KL_ESTIMATORS) == ["k1", "k2", "k3"]


def test_kl_estimate_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(P, Q, estimator="k4")


def test_log1mexp_by_hand_on_both_branches():
    # log(1 − e^{log 0.25}) = log 0.75 ; log(1 − e^{log 0.9}) = log 0.1 (the expm1 branch)
    # tiny x: log(1 − e^{−1e-10}) ≈ log 1e-10 (naive log1p(−exp(x)) loses it)
    x = torch.tensor([math.log(0.25), math.log(0.9), -1e-10], dtype=torch.float64)
    expected = torch.tensor([math.log(0.75), math.log(0.1), math.log(1e-10)], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), expected, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_moves_up_when_kl_is_above_target():
    # error = clip(9/6 − 1 = 0.5, ±0.2) = 0.2 ; value = 0.1·(1 + 0.2·256/10000) = 0.1·1.00512 = 0.100512
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.100512, abs=1e-12)


def test_adaptive_kl_controller_moves_down_when_kl_is_below_target():
    # error = 5.4/6 − 1 = −0.1 (inside the clip) ; value = 0.1·(1 − 0.1·100/10000) = 0.0999
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(5.4, n_steps=100)
    assert ctl.value == pytest.approx(0.0999, abs=1e-12)
    # at target: error 0 → unchanged
    ctl.update(6.0, n_steps=100)
    assert ctl.value == pytest.approx(0.0999, abs=1e-12)


def test_kl_controllers_state_dict_round_trip():
    ctl = AdaptiveKLController(0.2, target=3.0, horizon=500)
    ctl.update(10.0, n_steps=50)  # 0.2·(1 + 0.2·50/500) = 0.204
    assert ctl.value == pytest.approx(0.204, abs=1e-12)
    fresh = AdaptiveKLController(1.0, target=1.0, horizon=1)
    fresh.load_state_dict(ctl.state_dict())
    assert (fresh.value, fresh.target, fresh.horizon) == (ctl.value, 3.0, 500)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, n_steps=1000)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


# ---------------------------------------------------------------------------- running moments


def test_running_moments_by_hand():
    # batches [1, 2] and [3, 4, 5]: all = 1..5, mean 3, unbiased std sqrt(10/4) = 1.581139
    rm = RunningMoments()
    assert rm.update(torch.tensor([1.0, 2.0])) == pytest.approx((1.5, math.sqrt(0.5)))
    rm.update(torch.tensor([3.0, 4.0, 5.0]))
    assert (rm.mean, rm.std, rm.count) == (pytest.approx(3.0), pytest.approx(math.sqrt(2.5)), 5)


def test_running_moments_match_numpy_on_concatenated_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (7, 1, 30, 4)]
    rm = RunningMoments()
    for b in batches:
        batch_mean, batch_std = rm.update(torch.from_numpy(b))
        assert batch_mean == pytest.approx(b.mean(), abs=1e-12)
        assert batch_std == pytest.approx(b.std(ddof=1) if b.size > 1 else 0.0, abs=1e-12)
    allx = np.concatenate(batches)
    assert rm.mean == pytest.approx(allx.mean(), abs=1e-12)
    assert rm.var == pytest.approx(allx.var(), abs=1e-12)
    assert rm.std == pytest.approx(allx.std(ddof=1), abs=1e-12)
    assert rm.count == allx.size
    restored = RunningMoments()
    restored.load_state_dict(rm.state_dict())
    assert restored.state_dict() == rm.state_dict()


# ---------------------------------------------------------------------------- group advantages


def test_group_advantages_by_hand():
    # group 0 = [1, 2, 3]: mean 2, unbiased std 1 → [−1, 0, 1] / (1 + 1e-4) = [−0.99990001, 0, 0.99990001]
    # group 1 = [10, 10, 10]: mean 10, std 0 → all 0
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    adv = group_advantages(scores, group_size=3)
    torch.testing.assert_close(adv, torch.tensor([-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(
        group_advantages(scores, group_size=3, scale_by_std=False), torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    )


def test_rloo_advantages_by_hand():
    # [1, 2, 3]: 1 − (2+3)/2 = −1.5 ; 2 − (1+3)/2 = 0 ; 3 − (1+2)/2 = 1.5
    # [4, 5, 9]: 4 − (5+9)/2 = −3 ; 5 − (4+9)/2 = −1.5 ; 9 − (4+5)/2 = 4.5
    torch.testing.assert_close(
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 9.0]), group_size=3),
        torch.tensor([-1.5, 0.0, 1.5, -3.0, -1.5, 4.5]),
    )
    # k = 2, [4, 0]: 4 − 0 = 4 ; 0 − 4 = −4
    torch.testing.assert_close(rloo_advantages(torch.tensor([4.0, 0.0]), group_size=2), torch.tensor([4.0, -4.0]))
    # identity: RLOO = k/(k−1)·(r − mean)
    scores = torch.randn(12, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        rloo_advantages(scores, group_size=4), 4 / 3 * group_advantages(scores, group_size=4, scale_by_std=False)
    )


@pytest.mark.parametrize("fn", [group_advantages, rloo_advantages])
def test_group_advantages_reject_wrong_sizes(fn):
    with pytest.raises(ValueError, match="7 scores cannot be split into groups of 3"):
        fn(torch.zeros(7), group_size=3)
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        fn(torch.zeros(4), group_size=1)
    with pytest.raises(ValueError, match="must be 1-D"):
        fn(torch.zeros(2, 3), group_size=3)
