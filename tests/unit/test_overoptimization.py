"""Gao et al. 2022's over-optimisation forms, fits and the best-of-n estimator, against hand values."""

import math

import pytest

from rlhfkit.evaluate import overoptimization as O


def test_kl_bon_by_hand():
    assert O.kl_bon(1) == 0.0  # log 1 − 0/1
    assert O.kl_bon(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)  # 0.693147 − 0.5 = 0.193147
    assert O.kl_bon(4) == pytest.approx(math.log(4) - 3 / 4, abs=1e-15)
    with pytest.raises(ValueError):
        O.kl_bon(0)


@pytest.mark.parametrize("alpha,beta", [(1.3, 0.4), (0.7, -0.2), (2.0, 1.5)])
def test_rl_fit_recovers_exact_points(alpha, beta):
    d = [0.0, 0.3, 0.8, 1.5, 2.2, 3.0]
    gain = [d_ * (alpha - beta * math.log(d_)) if d_ > 0 else 0.0 for d_ in d]
    fit = O.fit_rl_form(d, gain)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-9)
    assert fit["beta"] == pytest.approx(beta, abs=1e-9)


@pytest.mark.parametrize("alpha,beta", [(1.3, 0.4), (0.5, -0.1)])
def test_bon_fit_recovers_exact_points(alpha, beta):
    d = [math.sqrt(O.kl_bon(n)) for n in (1, 2, 4, 8, 16)]
    gain = [x * (alpha - beta * x) for x in d]
    fit = O.fit_bon_form(d, gain)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-9)
    assert fit["beta"] == pytest.approx(beta, abs=1e-9)


def test_peaks_by_hand():
    # RL form, α = 1, β = 0.5: d* = exp(1/0.5 − 1) = e; R(e) = e (1 − 0.5 · log e) = e / 2; KL* = e²
    assert O.rl_peak(1.0, 0.5) == pytest.approx(math.e, abs=1e-12)
    d = [0.5, 1.0, 2.0, 3.0]
    fit = O.fit_rl_form(d, [O.rl_form(x, 1.0, 0.5) for x in d])
    assert fit["kl_peak"] == pytest.approx(math.e ** 2, abs=1e-9)
    assert fit["gain_peak"] == pytest.approx(math.e / 2, abs=1e-9)
    assert O.rl_form(math.e, 1.0, 0.5) > max(O.rl_form(math.e - 1e-3, 1.0, 0.5), O.rl_form(math.e + 1e-3, 1.0, 0.5))
    # BoN form, α = 1, β = 0.25: d* = 1 / (2 · 0.25) = 2; R(2) = 2 (1 − 0.5) = 1; KL* = 4
    assert O.bon_peak(1.0, 0.25) == 2.0 and O.bon_form(2.0, 1.0, 0.25) == 1.0
    # β <= 0: the fitted reward never turns down, no peak
    assert O.rl_peak(1.0, 0.0) is None and O.bon_peak(1.0, -0.1) is None
    assert O.fit_rl_form([0.5, 2.0], [0.5, 2.0])["kl_peak"] is None  # gain = d: α = 1, β = 0


def test_degenerate_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="degenerate"):
        O.fit_rl_form([0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="degenerate"):
        O.fit_bon_form([0.0, 0.7], [0.0, 0.2])  # one d > 0 for two unknowns
    with pytest.raises(ValueError, match="same|values"):
        O.fit_rl_form([1.0], [1.0, 2.0])


def test_best_of_n_three_samples_by_hand():
    proxy, gold = [0.1, 0.5, 0.3], [1.0, 2.0, 3.0]
    # n = 1: the mean gold (1 + 2 + 3) / 3 = 2
    assert O.best_of_n_expected(proxy, gold, 1) == pytest.approx(2.0, abs=1e-15)
    # n = 2: subsets {a,b} keep b (gold 2), {a,c} keep c (gold 3), {b,c} keep b (gold 2): 7/3
    assert O.best_of_n_expected(proxy, gold, 2) == pytest.approx(7 / 3, abs=1e-15)
    # n = 3: always the proxy's favourite b: gold 2
    assert O.best_of_n_expected(proxy, gold, 3) == pytest.approx(2.0, abs=1e-15)
    # a proxy tie between b and c is broken at random: their gold counts as (2 + 3) / 2 = 2.5
    assert O.best_of_n_expected([0.1, 0.5, 0.5], gold, 3) == pytest.approx(2.5, abs=1e-15)
    with pytest.raises(ValueError):
        O.best_of_n_expected(proxy, gold, 4)


def test_best_of_n_curve_rows():
    rows = O.best_of_n_curve([[0.1, 0.5, 0.3], [1.0, 0.0, 2.0]], [[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], [1, 2])
    assert [r["n"] for r in rows] == [1, 2] and rows[0]["kl"] == 0.0 and rows[0]["d"] == 0.0
    # prompt 2, n = 2: sorted proxy (0.0 → gold 1, 1.0 → 0, 2.0 → 0): weights 0, 1/3, 2/3 → gold 0
    assert rows[1]["gold"] == pytest.approx((7 / 3 + 0.0) / 2, abs=1e-15)
    assert rows[1]["proxy"] == pytest.approx(((0.3 + 2 * 0.5) / 3 + (1.0 + 2 * 2.0) / 3) / 2, abs=1e-15)
