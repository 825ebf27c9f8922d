"""The labelling-cost curve's pure parts: the Bradley–Terry head, budgets, the 95 % read-out, selection."""

import math

import pytest
import torch

from rlhfkit.evaluate import labelling_cost as L


def _separable(n=40, seed=0):
    # the true reward is the first feature: the chosen response always has the larger one
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4 * n, 3, generator=g), torch.randn(4 * n, 3, generator=g)
    keep = (a[:, 0] - b[:, 0]).abs() > 0.5  # a margin on the true reward: separable with room to spare
    a, b = a[keep][:n], b[keep][:n]
    first_better = (a[:, 0] > b[:, 0]).tolist()
    chosen = torch.where(torch.tensor(first_better)[:, None], a, b)
    rejected = torch.where(torch.tensor(first_better)[:, None], b, a)
    return chosen, rejected


def test_bt_head_on_separable_features_has_accuracy_one():
    chosen, rejected = _separable()
    w = L.fit_bt_head(chosen - rejected, l2=1e-4)
    assert w[0] > 0 and abs(w[0]) > 3 * max(abs(w[1]), abs(w[2]))
    ea, eb = _separable(30, seed=1)
    assert L.pair_accuracy(w, ea, eb, [True] * 30) == 1.0
    assert L.pair_accuracy(w, eb, ea, [False] * 30) == 1.0  # the same pairs in the other order


def test_bt_head_one_pair_by_hand():
    # one difference x = (1,), l2 = 1: minimise log(1 + e^−w) + w²/2 ⇒ σ(−w) = w, w = 1/(1 + e^w): w = 0.401 gives 1/(1 + 1.4933) = 0.40107
    w = float(L.fit_bt_head(torch.tensor([[1.0]]), l2=1.0)[0])
    assert w == pytest.approx(1 / (1 + math.exp(w)), abs=1e-9) and w == pytest.approx(0.40106, abs=1e-4)


def test_bt_head_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        L.fit_bt_head(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="l2"):
        L.fit_bt_head(torch.ones(2, 3), l2=0.0)


def test_budgets():
    assert L.budgets(100) == [8, 16, 32, 64, 100]
    assert L.budgets(5) == [5]
    assert L.budgets(64) == [8, 16, 32, 64]
    assert L.budgets(10_000, points=3) == [4096, 8192, 10_000]


def test_labels_to_reach_by_hand():
    curve = [{"labels": 10, "accuracy": 0.50}, {"labels": 20, "accuracy": 0.58},
             {"labels": 40, "accuracy": 0.61}, {"labels": 80, "accuracy": 0.60}]
    # 95 % of the final 0.60 = 0.57: first reached at 20 labels
    assert L.labels_to_reach(curve) == 20
    # 95 % of 0.65 = 0.6175: never reached
    assert L.labels_to_reach(curve, final=0.65) is None
    # 80 % of 0.60 = 0.48: the first point
    assert L.labels_to_reach(curve, fraction=0.8) == 10
    assert L.labels_to_reach([]) is None


def test_learning_curves_random_and_active():
    chosen, rejected = _separable(64)
    ea, eb = _separable(40, seed=3)
    sizes = [4, 8, 64]
    rand = L.learning_curve(chosen, rejected, ea, eb, [True] * 40, sizes, strategy="random", seed=0)
    act = L.learning_curve(chosen, rejected, ea, eb, [True] * 40, sizes, strategy="active", seed=0)
    assert [r["labels"] for r in rand] == sizes == [r["labels"] for r in act]
    # same seed batch, same whole pool: the first and last points agree
    assert rand[0]["accuracy"] == act[0]["accuracy"] and rand[-1]["accuracy"] == act[-1]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="strategy"):
        L.learning_curve(chosen, rejected, ea, eb, [True] * 40, sizes, strategy="greedy")
    with pytest.raises(ValueError, match="sizes"):
        L.learning_curve(chosen, rejected, ea, eb, [True] * 40, [8, 4], strategy="random")


def test_active_selection_takes_the_most_uncertain_pairs(monkeypatch):
    # pool: 2 seed pairs far apart on feature 0, then pairs whose margins under any w ∝ e0 are 5, 0.1, 3, 0.2
    chosen = torch.tensor([[4.0, 0.0], [2.0, 0.0], [5.0, 0.0], [0.1, 0.0], [3.0, 0.0], [0.2, 0.0]])
    rejected = torch.zeros_like(chosen)
    picked = []
    real_fit = L.fit_bt_head

    def spy(diffs, **kw):
        picked.append(diffs[:, 0].tolist())
        return real_fit(diffs, **kw)

    monkeypatch.setattr(L, "fit_bt_head", spy)
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None: torch.arange(n))  # pool order = seed order
    L.learning_curve(chosen, rejected, chosen[:1], rejected[:1], [True], [2, 4], strategy="active")
    # the seed batch is pairs 0 and 1; the next two are the smallest |margin|: 0.1 and 0.2
    assert picked[0] == [4.0, 2.0] and picked[1] == pytest.approx([4.0, 2.0, 0.1, 0.2])


def test_mean_curve_by_hand():
    a = [{"labels": 8, "accuracy": 0.5}, {"labels": 16, "accuracy": 0.7}]
    b = [{"labels": 8, "accuracy": 0.6}, {"labels": 16, "accuracy": 0.6}]
    # (0.5 + 0.6) / 2 = 0.55, (0.7 + 0.6) / 2 = 0.65
    assert L.mean_curve([a, b]) == [{"labels": 8, "accuracy": pytest.approx(0.55)},
                                    {"labels": 16, "accuracy": pytest.approx(0.65)}]
    with pytest.raises(ValueError, match="budgets"):
        L.mean_curve([a, a[:1]])
