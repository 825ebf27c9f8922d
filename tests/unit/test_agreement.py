"""Krippendorff's α and Cohen's κ against textbook values, the arithmetic written out."""

import math

import pytest

from rlhfkit.feedback.agreement import coincidences, cohen_kappa, krippendorff_alpha

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C:
# 4 observers, 12 units, values 1..5, missing data. Rows: observers; columns: units.
OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]
UNITS = list(zip(*OBSERVERS))


def test_coincidence_matrix_example_c():
    o = coincidences(UNITS)
    # unit 12 has one value: not pairable. Unit 6 = (1, 2, 3, 4): m_u = 4, each ordered pair counts 1/3.
    # Unit 2 = (2, 2, 3, 2): m_u = 4; pairs 2-2: 3·2 = 6 ordered -> 2, pairs 2-3: 3 -> 1 each way.
    # Unit 8 = (1, 1, 2, 1): likewise 1-1: 2, 1-2: 1.   Unit 11 = (1, 1): 1-1: 2 / 1 = 2.
    assert o[(1, 2)] == pytest.approx(1 / 3 + 1)  # unit 6 + unit 8
    assert o[(2, 3)] == pytest.approx(1 / 3 + 1)  # unit 6 + unit 2
    assert o[(1, 1)] == pytest.approx(3 + 2 + 2)  # units 1 (three 1s: 6/2) + 8 + 11
    marginals = {c: sum(w for (a, _), w in o.items() if a == c) for c in range(1, 6)}
    assert marginals == pytest.approx({1: 9, 2: 13, 3: 10, 4: 5, 5: 3})  # n = 40 pairable values


def test_krippendorff_alpha_nominal_example_c():
    # diagonal o_cc = 7 + 10 + 8 + 4 + 3 = 32, so the off-diagonal (disagreeing) mass is 40 - 32 = 8.
    # Σ_{c≠k} n_c n_k = n² - Σ n_c² = 1600 - (81 + 169 + 100 + 25 + 9) = 1216.
    # α = 1 - (n - 1) · 8 / 1216 = 1 - 39 · 8 / 1216 = 1 - 312 / 1216 = 0.743421...
    assert krippendorff_alpha(UNITS, level="nominal") == pytest.approx(1 - 312 / 1216, abs=1e-12)
    assert round(krippendorff_alpha(UNITS), 3) == 0.743  # the value Krippendorff reports


def test_krippendorff_alpha_ordinal_example_c():
    # δ(c, k) = Σ_{g=c..k} n_g - (n_c + n_k) / 2 with n = 9, 13, 10, 5, 3:
    d2 = {(1, 2): (22 - 11) ** 2, (1, 3): (32 - 9.5) ** 2, (1, 4): (37 - 7) ** 2, (1, 5): (40 - 6) ** 2,
          (2, 3): (23 - 11.5) ** 2, (2, 4): (28 - 9) ** 2, (2, 5): (31 - 8) ** 2,
          (3, 4): (15 - 7.5) ** 2, (3, 5): (18 - 6.5) ** 2, (4, 5): (8 - 4) ** 2}
    assert d2[(1, 3)] == 506.25 and d2[(2, 5)] == 529
    # observed: 2 · (4/3·121 + 1/3·506.25 + 1/3·900 + 4/3·132.25 + 1/3·361 + 1/3·56.25) = 2 · 945.5 = 1891
    # expected: 2 · Σ_{c<k} n_c n_k δ² = 2 · 199740 = 399480
    n = {1: 9, 2: 13, 3: 10, 4: 5, 5: 3}
    assert 2 * sum(n[c] * n[k] * v for (c, k), v in d2.items()) == 399480
    # α = 1 - 39 · 1891 / 399480 = 0.815388...
    assert krippendorff_alpha(UNITS, level="ordinal") == pytest.approx(1 - 39 * 1891 / 399480, abs=1e-12)
    assert round(krippendorff_alpha(UNITS, level="ordinal"), 3) == 0.815


def test_krippendorff_alpha_two_coders_binary():
    # Krippendorff (2011) example A: 2 coders, 10 units, values 0/1.
    a = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    # coincidences: o_00 = 10, o_11 = 2, o_01 = o_10 = 4; n_0 = 14, n_1 = 6, n = 20
    # α = 1 - (n - 1) · o_01·2 / (2 · n_0 · n_1) = 1 - 19 · 8 / 168 = 0.095238...
    assert krippendorff_alpha(list(zip(a, b))) == pytest.approx(1 - 19 * 8 / 168, abs=1e-12)


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha([[1, 1], [2, 2], [3, None, 3]]) == 1.0  # perfect agreement
    assert math.isnan(krippendorff_alpha([[1, 1], [1, 1]]))  # no variation: undefined
    assert math.isnan(krippendorff_alpha([[1], [2, None]]))  # nothing pairable
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha([[1, 2]], level="interval")


def test_cohen_kappa_textbook():
    # 50 items, 2 raters: yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    # p_o = (20 + 15) / 50 = 0.7; p_e = 0.5 · 0.6 + 0.5 · 0.4 = 0.5; κ = (0.7 - 0.5) / 0.5 = 0.4
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_three_categories():
    # A / tie / B: a = [A, A, B, tie], b = [A, B, B, tie]: p_o = 3/4
    # p_e = p_a(A)p_b(A) + p_a(B)p_b(B) + p_a(tie)p_b(tie) = (2·1 + 1·2 + 1·1) / 16 = 5/16
    # κ = (3/4 - 5/16) / (1 - 5/16) = (7/16) / (11/16) = 7/11
    assert cohen_kappa(["A", "A", "B", "tie"], ["A", "B", "B", "tie"]) == pytest.approx(7 / 11, abs=1e-12)


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([1, 2], [1, 2]) == 1.0
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))  # p_e = 1
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa([1], [1, 2])
