"""The length-controlled win rate (AlpacaEval 2's GLM, rlhfkit/evaluate/length_control.py) on
constructed cases whose answer is known: a length-only judge, a simulated (θ, φ), Δlen = 0."""

import math
import random
import statistics

import pytest

from rlhfkit.evaluate.length_control import (Comparison, bootstrap_lc_ci, fit_length_controlled,
                                             length_feature)


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_length_feature_by_hand():
    # tanh(2 / 4) = tanh(0.5) = 0.462117...; sd 0 means no length term
    assert length_feature(2.0, 4.0) == pytest.approx(0.46211716, abs=1e-8)
    assert length_feature(3.0, 0.0) == 0.0


def test_zero_length_difference_gives_the_raw_win_rate():
    # outcomes 1, 1, 0, ½ → p = 2.5 / 4 = 0.625; θ = logit(0.625) = log(0.625 / 0.375) = 0.510826;
    # the length term is 0 (sd of Δlen = 0), so LC = σ(θ) = σ(logit(p)) = p
    comps = [Comparison(0, i, 0.0, y) for i, y in enumerate([1.0, 1.0, 0.0, 0.5])]
    fit = fit_length_controlled(comps)
    assert fit.converged
    assert fit.raw_win_rate[0] == 0.625
    assert fit.theta[0] == pytest.approx(math.log(0.625 / 0.375), abs=1e-5)
    assert fit.phi[0] == pytest.approx(0.0, abs=1e-12)
    assert fit.lc_win_rate[0] == pytest.approx(0.625, abs=1e-6)


def test_a_judge_that_only_sees_length_gives_lc_50_while_raw_is_far_from_it():
    # the policy is longer on 80% of the comparisons; the judge's P(policy) = σ(3·tanh(Δ / sd)), a
    # function of length only (θ = 0), given as soft labels: the MLE is exactly θ = 0, φ = 3
    rng = random.Random(0)
    deltas = [rng.uniform(1, 30) if rng.random() < 0.8 else -rng.uniform(1, 30) for _ in range(400)]
    sd = statistics.stdev(deltas)
    comps = [Comparison(0, i, d, sigmoid(3 * math.tanh(d / sd))) for i, d in enumerate(deltas)]
    fit = fit_length_controlled(comps)
    assert fit.raw_win_rate[0] > 0.65  # far from ½: the longer policy "wins"
    assert fit.lc_win_rate[0] == pytest.approx(0.5, abs=1e-4)
    assert fit.phi[0] == pytest.approx(3.0, abs=1e-3)
    assert fit.length_sd[0] == pytest.approx(sd)


def test_recovers_known_theta_and_phi_from_simulated_outcomes():
    # 20 000 Bernoulli outcomes with θ = 0.8, φ = 1.5 (seed 0); the standard errors are ≈ 0.02 for θ
    # and ≈ 0.03 for φ (1 / sqrt(N · p(1 − p) · E[x²])), so a tolerance of 0.1 is over 3 of them
    theta, phi = 0.8, 1.5
    rng = random.Random(0)
    deltas = [rng.gauss(5, 20) for _ in range(20000)]
    sd = statistics.stdev(deltas)
    comps = [Comparison(0, i, d, float(rng.random() < sigmoid(theta + phi * math.tanh(d / sd))))
             for i, d in enumerate(deltas)]
    fit = fit_length_controlled(comps)
    assert fit.converged
    assert fit.theta[0] == pytest.approx(theta, abs=0.1)
    assert fit.phi[0] == pytest.approx(phi, abs=0.1)
    assert fit.lc_win_rate[0] == pytest.approx(sigmoid(theta), abs=0.03)


def joint_case():
    """Two policies on 60 shared prompts: prompt p is easy (γ = +1) or hard (γ = −1) for both; policy
    0 has θ = 0.5, policy 1 θ = −0.5; both gain φ = 1 from length. Soft labels (exact probabilities)."""
    rng = random.Random(1)
    gammas = [1.0 if p % 2 else -1.0 for p in range(60)]
    comps = []
    for m, theta in enumerate((0.5, -0.5)):
        rows = [(p, rng.uniform(-20, 40)) for p in range(60) for _ in range(4)]
        sd = statistics.stdev([d for _, d in rows])
        comps += [Comparison(m, p, d, sigmoid(theta + 1.0 * math.tanh(d / sd) + gammas[p])) for p, d in rows]
    return comps, gammas


def test_difficulty_term_is_shared_and_shrunk():
    comps, gammas = joint_case()
    fit = fit_length_controlled(comps, difficulty=True, l2=1e-5)
    assert fit.converged
    # θ_m + γ_p is identified; θ_0 − θ_1 = 1 and γ_odd − γ_even = 2 are recovered exactly (weak L2)
    assert fit.theta[0] - fit.theta[1] == pytest.approx(1.0, abs=1e-3)
    assert fit.gamma[1] - fit.gamma[0] == pytest.approx(2.0, abs=1e-3)
    assert fit.phi == pytest.approx([1.0, 1.0], abs=1e-3)
    # LC = mean over prompts of σ(θ_m + γ_p): half the prompts at γ = +1, half at −1
    want = [(sigmoid(t + 1) + sigmoid(t - 1)) / 2 for t in (0.5, -0.5)]
    assert fit.lc_win_rate == pytest.approx(want, abs=1e-3)
    # an L2 so strong that every γ is 0 gives each policy's separate fit without the term
    stiff = fit_length_controlled(comps, difficulty=True, l2=1e9)
    alone = [fit_length_controlled([Comparison(0, c.prompt, c.delta_len, c.outcome) for c in comps if c.policy == m])
             for m in range(2)]
    assert max(abs(g) for g in stiff.gamma) < 1e-6
    assert stiff.lc_win_rate == pytest.approx([a.lc_win_rate[0] for a in alone], abs=1e-6)


def test_separable_outcomes_stay_finite():
    comps = [Comparison(0, i, float(i), 1.0) for i in range(10)]
    fit = fit_length_controlled(comps)
    assert all(math.isfinite(v) for v in fit.theta + fit.phi)
    assert fit.lc_win_rate[0] > 0.99


def test_bootstrap_interval_contains_the_fit_and_is_deterministic():
    comps, _ = joint_case()
    fit = fit_length_controlled(comps, difficulty=True)
    ci = bootstrap_lc_ci(comps, n_prompts=60, n_policies=2, difficulty=True, n_resamples=30, seed=0)
    assert ci == bootstrap_lc_ci(comps, n_prompts=60, n_policies=2, difficulty=True, n_resamples=30, seed=0)
    for (low, high), value in zip(ci, fit.lc_win_rate):
        assert low <= value <= high and high - low < 0.3


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="no comparisons"):
        fit_length_controlled([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_length_controlled([Comparison(0, 0, 1.0, 2.0)])
    with pytest.raises(ValueError, match="policy 1 has no comparison"):
        fit_length_controlled([Comparison(0, 0, 1.0, 1.0)], n_policies=2)
