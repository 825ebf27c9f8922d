"""Evaluation metrics, checked against numbers worked out by hand."""

import math

import pytest

import random

from rlhfkit.evaluate.metrics import (agreement_rate, bootstrap_mean_ci, distinct_n, expected_calibration_error,
                                      fit_temperature, mean_length, pairwise_ece, pairwise_nll, pearson, self_bleu,
                                      sentence_bleu, sigmoid, sycophancy_rates, wilson_interval, win_rate,
                                      win_rate_by_prompt)


def test_distinct_n_by_hand():
    texts = ["a b c", "a b d"]
    # bigrams: (a b) (b c) | (a b) (b d) -> 4 in all, 3 distinct
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    # unigrams: a b c a b d -> 6 in all, 4 distinct
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # n-grams never span two texts: "c a" is not a bigram here
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert math.isnan(distinct_n(["a", "b"], 2))
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_mean_length():
    assert mean_length([" the dax is red.", "hi", ""]) == pytest.approx((4 + 1 + 0) / 3)
    assert math.isnan(mean_length([]))


def test_bleu_by_hand():
    # hypothesis "a b c" vs reference "a b d", n = 2:
    # p1 = 2/3 ; bigrams (a b) (b c), one match -> smoothed p2 = (1 + 1) / (2 + 1) = 2/3
    # BLEU = exp((log 2/3 + log 2/3) / 2) = 2/3 ; equal lengths -> BP = 1
    assert sentence_bleu("a b c".split(), ["a b d".split()], n=2) == pytest.approx(2 / 3)
    # brevity: "a b" vs "a b c d", n = 1: p1 = 1, BP = exp(1 - 4/2) = e^-1
    assert sentence_bleu("a b".split(), ["a b c d".split()], n=1) == pytest.approx(math.exp(-1))
    # clipping: "a a a" vs "a b": one "a" may match -> p1 = 1/3 ; BP: c = 3 > r = 2 -> 1
    assert sentence_bleu("a a a".split(), ["a b".split()], n=1) == pytest.approx(1 / 3)
    # no unigram in common: 0
    assert sentence_bleu("x y".split(), ["a b".split()], n=4) == 0.0


def test_self_bleu_by_hand():
    # each text against the other: 2/3 both ways (see test_bleu_by_hand)
    assert self_bleu(["a b c", "a b d"], n=2) == pytest.approx(2 / 3)
    # identical texts: every precision 1, BP 1
    assert self_bleu(["the dax is red ."] * 5) == pytest.approx(1.0)
    # more diverse sets score lower
    assert self_bleu(["the dax is red", "a zorp eats fish", "go to the lake now"]) < 0.3
    assert math.isnan(self_bleu(["only one"]))
    # with max_refs the subset is seeded: same call, same value
    texts = [f"w{i % 7} w{i % 5} w{i % 3} w{i % 2}" for i in range(40)]
    assert self_bleu(texts, max_refs=5, seed=1) == self_bleu(texts, max_refs=5, seed=1)


def test_win_rate_with_ties_by_hand():
    out = win_rate([3, 1, 2, 5], [1, 1, 4, 0])
    # win, tie, loss, win -> (1 + 0.5 + 0 + 1) / 4 = 0.625
    assert out["win_rate"] == pytest.approx(0.625)
    assert (out["wins"], out["ties"], out["losses"], out["n"]) == (2, 1, 1, 4)
    # Wilson, z = 1.96, n = 4: z² = 3.8416, denom = 1 + 3.8416/4 = 1.9604
    # center = (0.625 + 3.8416/8) / 1.9604 = 1.1052 / 1.9604 = 0.563763
    # half = 1.96 / 1.9604 * sqrt(0.625*0.375/4 + 3.8416/64) = 0.999796 * sqrt(0.118619) = 0.344340
    assert out["ci_low"] == pytest.approx(0.563763 - 0.344340, abs=1e-5)
    assert out["ci_high"] == pytest.approx(0.563763 + 0.344340, abs=1e-5)
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_win_rate_ci_contains_point_estimate():
    for a, b in [([1] * 5, [0] * 5), ([0] * 5, [1] * 5), ([1, 0, 1], [0, 0, 0]), ([1] * 30, [1] * 30),
                 (list(range(50)), list(range(49, -1, -1)))]:
        out = win_rate(a, b)
        assert out["ci_low"] <= out["win_rate"] <= out["ci_high"]
        assert 0.0 <= out["ci_low"] and out["ci_high"] <= 1.0
    # all wins: rate 1, the upper bound reaches 1 and the lower one stays below it
    out = win_rate([1] * 5, [0] * 5)
    assert out["win_rate"] == 1.0 and out["ci_high"] == pytest.approx(1.0) and out["ci_low"] < 0.7
    # the interval narrows as n grows
    assert (win_rate([1, 0] * 200, [0, 1] * 200)["ci_high"] - win_rate([1, 0] * 200, [0, 1] * 200)["ci_low"]
            < win_rate([1, 0] * 5, [0, 1] * 5)["ci_high"] - win_rate([1, 0] * 5, [0, 1] * 5)["ci_low"])
    assert math.isnan(win_rate([], [])["win_rate"])


def test_win_rate_by_prompt_by_hand():
    # prompt 1: A (2) vs B (1, 2, 3) -> win, tie, loss = 1.5 / 3 = 0.5
    # prompt 2: A (5, 1) vs B (1, 1) -> 5 wins twice, 1 ties twice = 3 / 4 = 0.75 ; mean over prompts 0.625
    out = win_rate_by_prompt([[2], [5, 1]], [[1, 2, 3], [1, 1]])
    assert out["win_rate"] == pytest.approx(0.625) and out["n"] == 2 and out["comparisons"] == 7
    assert out["ci_low"] <= 0.625 <= out["ci_high"]
    # the interval is the bootstrap over the two per-prompt values, with the same seed
    assert (out["ci_low"], out["ci_high"]) == bootstrap_mean_ci([0.5, 0.75], n_resamples=2000, confidence=0.95, seed=0)
    # one sample each side per prompt: the plain win rate
    one_each = win_rate_by_prompt([[3], [1], [2]], [[1], [1], [4]])
    assert one_each["win_rate"] == win_rate([3, 1, 2], [1, 1, 4])["win_rate"]
    with pytest.raises(ValueError, match="prompt 0 has no score for B"):
        win_rate_by_prompt([[1]], [[]])
    with pytest.raises(ValueError):
        win_rate_by_prompt([[1]], [[1], [2]])
    assert math.isnan(win_rate_by_prompt([], [])["win_rate"])


def test_bootstrap_mean_ci_by_hand():
    # values (0, 1): a resample of two is (0,0), (0,1), (1,0) or (1,1), so its mean is 0, 0.5 or 1 with
    # probability 1/4, 1/2, 1/4. The 2.5% and 97.5% quantiles of 2,000 such means: 0 and 1 (each end
    # holds ~500 of them, far more than the 50 below 2.5%).
    assert bootstrap_mean_ci([0, 1], n_resamples=2000, confidence=0.95, seed=0) == (0.0, 1.0)
    # a 25% interval: quantiles 0.375 and 0.625 both fall in the middle half, mean 0.5
    assert bootstrap_mean_ci([0, 1], n_resamples=2000, confidence=0.25, seed=0) == (0.5, 0.5)
    # constant values: a point
    low, high = bootstrap_mean_ci([0.25] * 7, n_resamples=500, confidence=0.95, seed=1)
    assert low == high == pytest.approx(0.25)
    assert bootstrap_mean_ci([0.25] * 7, n_resamples=500, confidence=0.95, seed=1) == (low, high)  # seeded
    assert all(math.isnan(v) for v in bootstrap_mean_ci([], n_resamples=10, confidence=0.95, seed=0))
    with pytest.raises(ValueError):
        bootstrap_mean_ci([1.0], n_resamples=10, confidence=1.0, seed=0)


def test_bootstrap_mean_ci_contains_the_mean_and_shrinks_with_n():
    rng = random.Random(3)
    widths = []
    for n in (20, 80, 320):
        values = [rng.random() for _ in range(n)]
        low, high = bootstrap_mean_ci(values, n_resamples=2000, confidence=0.95, seed=0)
        assert low <= sum(values) / n <= high
        widths.append(high - low)
    # the standard error falls as 1/sqrt(n): each 4x more values roughly halves the width
    assert widths[0] > 1.5 * widths[1] > 1.5 * 1.5 * widths[2]
    # U(0, 1) has sd 0.2887: at n = 320 the 95% width is about 2 * 1.96 * 0.2887 / sqrt(320) = 0.063
    assert widths[2] == pytest.approx(0.063, abs=0.01)


class _NoProbes:
    def probe_truth(self, prompt):
        return None


def test_win_rate_interval_is_over_prompts_not_samples():
    # Regression (issue 11): 100 prompts x 2 samples, both samples of a prompt win (50 prompts) or both
    # lose (50), against 2 baseline samples. There are 100 independent units, not 200: per prompt the
    # win is 0 or 1, so the 95% interval is about 0.5 ± 1.96 * sqrt(0.25 / 100) = [0.40, 0.60], while a
    # Wilson interval over the 200 samples, treated as independent, is only [0.43, 0.57].
    from rlhfkit.evaluate.policy import PolicySamples, summarize

    prompts = [f"p{i}" for i in range(100)]
    gold = [[1.0, 1.0] if i % 2 == 0 else [-1.0, -1.0] for i in range(100)]
    policy = PolicySamples(prompts=prompts, responses=[["a", "b"]] * 100, gold=gold)
    baseline = PolicySamples(prompts=prompts, responses=[["c", "d"]] * 100, gold=[[0.0, 0.0]] * 100)
    entry = summarize(_NoProbes(), policy, baseline=baseline, baseline_name="sft")
    low, high = entry["win_rate_vs_sft_ci"]
    assert entry["win_rate_vs_sft"] == pytest.approx(0.5)
    per_sample_low, per_sample_high = wilson_interval(0.5, 200)
    assert high - low > 1.25 * (per_sample_high - per_sample_low)
    assert low == pytest.approx(0.40, abs=0.02) and high == pytest.approx(0.60, abs=0.02)


class _StubTask:
    """probe_truth and stance from tables: the metric is tested apart from the facts task."""

    truth = {"p1": False, "p2": False, "p3": True, "p4": True, "p5": None, "p6": False}
    stances = {"p1": "agree", "p2": "disagree", "p3": "disagree", "p4": "agree", "p5": None, "p6": None}

    def probe_truth(self, prompt):
        return self.truth[prompt]

    def stance(self, prompt, response):
        return self.stances[prompt]


def test_sycophancy_rates_by_hand():
    prompts = ["p1", "p2", "p3", {"prompt": "p4"}, "p5", "p6"]
    out = sycophancy_rates(_StubTask(), prompts, ["r"] * 6)
    # false claims: p1 agree (sycophantic), p2 disagree, p6 unclear -> 1/3
    # true claims: p3 disagree (contrarian), p4 agree -> 1/2 ; p5 is not a probe
    assert out["sycophancy_rate"] == pytest.approx(1 / 3)
    assert out["contrarian_rate"] == pytest.approx(1 / 2)
    assert out["probe_accuracy"] == pytest.approx(2 / 5)   # p2 and p4 right, of 5 probes
    assert (out["n_false"], out["n_true"]) == (3, 2)
    empty = sycophancy_rates(_StubTask(), ["p5"], ["r"])
    assert math.isnan(empty["sycophancy_rate"]) and empty["n_false"] == 0


def test_expected_calibration_error_by_hand():
    probs = [0.1, 0.15, 0.8, 0.9, 0.95]
    labels = [0, 1, 1, 1, 0]
    # 10 bins: {0.1, 0.15} in bin 1, {0.8} in bin 8, {0.9, 0.95} in bin 9
    # bin 1: conf 0.125, acc 0.5 -> 2/5 * 0.375 = 0.15
    # bin 8: conf 0.8, acc 1.0 -> 1/5 * 0.2 = 0.04
    # bin 9: conf 0.925, acc 0.5 -> 2/5 * 0.425 = 0.17      ECE = 0.36
    assert expected_calibration_error(probs, labels) == pytest.approx(0.36)
    # one bin: |mean label 3/5 - mean prob 0.58| = 0.02
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.02)
    assert expected_calibration_error([0.5, 0.5], [0, 1]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0], [1]) == pytest.approx(0.0)     # p = 1 is in the last bin
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [1])
    assert math.isnan(expected_calibration_error([], []))


def test_pearson_and_agreement_by_hand():
    # x = 1 2 3, y = 2 4 7: sxy = 5, sxx = 2, syy = 38/3 -> r = 5 / sqrt(76/3) = 0.993399
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(0.993399, abs=1e-6)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert agreement_rate([0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(0.75)


def test_pairwise_ece_by_hand():
    # two pairs stored chosen-first, P(chosen) 0.8 and 0.3, both labels 1. Counted both ways:
    # (0.8, 1) bin 8 -> |1 - 0.8| = 0.2 ; (0.2, 0) bin 2 -> 0.2 ; (0.3, 1) bin 3 -> 0.7 ; (0.7, 0) bin 7 -> 0.7
    # ECE = (0.2 + 0.2 + 0.7 + 0.7) / 4 = 0.45 ; the same as binning max(p, 1-p) = 0.8 (right), 0.7 (wrong)
    assert pairwise_ece([0.8, 0.3], [1, 1]) == pytest.approx(0.45)
    # sharing a bin: (0.62, 1) and (0.68, 0) in bin 6, conf 0.65, acc 0.5 -> 2/4 * 0.15 ;
    # mirrored (0.38, 0) and (0.32, 1) in bin 3, conf 0.35, acc 0.5 -> 2/4 * 0.15 ; ECE = 0.15
    assert pairwise_ece([0.62, 0.68], [1, 0]) == pytest.approx(0.15)
    # a soft label (2 of 3 annotators chose "chosen"): (0.9, 2/3) and (0.1, 1/3), each off by 0.9 - 2/3
    assert pairwise_ece([0.9], [2 / 3]) == pytest.approx(0.9 - 2 / 3)
    assert pairwise_ece([0.75], [0.75]) == pytest.approx(0.0)
    # the plain ECE of the first example: every label 1 -> 1 - mean p over bins = (0.2 + 0.7) / 2
    assert expected_calibration_error([0.8, 0.3], [1, 1]) == pytest.approx(0.45)
    assert math.isnan(pairwise_ece([], []))
    with pytest.raises(ValueError):
        pairwise_ece([0.5], [1.5])


def calibrated_pairs(n, *, temperature=1.0, sd=1.0, seed=0):
    """Margins r_a - r_b ~ N(0, sd); a is preferred with P = σ(margin / T); stored chosen-first, as the
    reward-model code stores pairs. Returns (margins r_chosen - r_rejected, labels: all 1)."""
    rng = random.Random(seed)
    margins = []
    for _ in range(n):
        m = rng.gauss(0.0, sd)
        a_wins = rng.random() < sigmoid(m / temperature)
        margins.append(m if a_wins else -m)
    return margins, [1] * n


def test_pairwise_ece_of_a_perfectly_calibrated_model_is_near_zero():
    # Regression (issue 11): chosen-first pairs of a calibrated model. The plain ECE sees only label 1
    # and measures 1 - mean σ(margin) (0.41 for sd 1: far from calibrated); counted both ways it is ~0.
    margins, labels = calibrated_pairs(10000, sd=1.0, seed=0)
    probs = [sigmoid(m) for m in margins]
    assert pairwise_ece(probs, labels) < 0.02
    assert expected_calibration_error(probs, labels) > 0.35


def test_fit_temperature_recovers_the_generating_temperature():
    # soft labels y = σ(m / 2) exactly: the cross-entropy is minimal where σ(m / T) = y, at T = 2
    rng = random.Random(1)
    margins = [rng.gauss(0.0, 3.0) for _ in range(200)]
    assert fit_temperature(margins, [sigmoid(m / 2.0) for m in margins]) == pytest.approx(2.0, rel=1e-4)
    # sampled hard labels, stored chosen-first: T ≈ 2 up to sampling noise (se ≈ 0.05 at n = 5000)
    margins, labels = calibrated_pairs(5000, temperature=2.0, sd=3.0, seed=2)
    t = fit_temperature(margins, labels)
    assert t == pytest.approx(2.0, abs=0.15)
    # the NLL at the fitted T is below its neighbours', and scaling fixes the ECE of the overconfident σ(m)
    assert pairwise_nll(margins, labels, t) < min(pairwise_nll(margins, labels, t * 0.9),
                                                   pairwise_nll(margins, labels, t * 1.1))
    assert pairwise_ece([sigmoid(m) for m in margins], labels) > 0.1
    assert pairwise_ece([sigmoid(m / t) for m in margins], labels) < 0.03


def test_fit_temperature_edge_cases():
    # perfectly separated labels: the NLL falls as T -> 0, so the search stops at the lower bound
    assert fit_temperature([1.0, 2.0, -1.0], [1, 1, 0], bounds=(0.05, 20.0)) == pytest.approx(0.05, rel=1e-4)
    # labels that contradict every margin: T -> infinity, the upper bound
    assert fit_temperature([1.0, -1.0], [0, 1], bounds=(0.05, 20.0)) == pytest.approx(20.0, rel=1e-4)
    assert fit_temperature([], []) == 1.0 and fit_temperature([0.0, 0.0], [1, 0]) == 1.0
    # pairwise_nll by hand: margin 1, label 1, T = 2 -> -log σ(0.5) = log(1 + e^-0.5) = 0.474077
    assert pairwise_nll([1.0], [1.0], 2.0) == pytest.approx(0.474077, abs=1e-6)
    with pytest.raises(ValueError):
        fit_temperature([1.0], [1], bounds=(0.0, 1.0))
