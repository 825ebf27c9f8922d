"""Each figure: PNG bytes on small data, None on empty data; the reliability bins match pairwise_ece."""

import pytest

from rlhfkit.evaluate import plots as P
from rlhfkit.evaluate.metrics import pairwise_ece

PNG = b"\x89PNG\r\n\x1a\n"

CURVE = {"step": [1, 2, 3], "proxy": [0.0, 0.2, 0.4], "gold": [1.0, 1.1, 1.05], "kl": [0.0, 0.3, 0.9]}
CASES = {
    "training_curves": (({"ppo": CURVE, "grpo": CURVE},), ({},)),
    "overoptimization": (({"ppo": {"d": [0, 0.5, 1], "proxy_gain": [0, 0.2, 0.5], "gold_gain": [0, 0.1, 0.05]}},
                          {"ppo": {"alpha": 0.2, "beta": 0.3}},
                          [{"n": 1, "d": 0.0, "proxy_gain": 0.0, "gold_gain": 0.0},
                           {"n": 2, "d": 0.44, "proxy_gain": 0.3, "gold_gain": 0.1}],
                          {"alpha": 0.3, "beta": 0.2}),
                         ({}, None, [], None)),
    "reliability_diagram": (([{"low": 0.4, "high": 0.5, "confidence": 0.45, "frequency": 0.5, "count": 3}], 0.05),
                            ([],)),
    "win_rates": (({"ppo": [0.6, 0.55, 0.65], "dpo": [0.52, 0.47, 0.58]},), ({},)),
    "seed_win_rates": (({"ppo": {"0": [0.6, 0.55, 0.65], "1": [0.58, 0.52, 0.63]}, "dpo": {"0": [0.62]}},), ({},)),
    "diversity_length_vs_kl": (({"ppo": {"kl": 0.6, "distinct_2": 0.15, "mean_length": 9.0}},), ({},)),
    "sycophancy_bars": (({"ppo": {"sycophancy_rate": 0.1, "contrarian_rate": 0.2}, "sft": {"sycophancy_rate": 0.3}},),
                        ({},)),
    "labelling_cost": (({"random": [{"labels": 8, "accuracy": 0.5}, {"labels": 16, "accuracy": 0.6}],
                         "active": [{"labels": 8, "accuracy": 0.5}, {"labels": 16, "accuracy": 0.62}]}, 0.68),
                       ({},)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_figure_is_png_and_empty_is_none(name):
    full, empty = CASES[name]
    png = getattr(P, name)(*full)
    assert isinstance(png, bytes) and png.startswith(PNG) and len(png) > 1000
    assert getattr(P, name)(*empty) is None


def test_reliability_bins_by_hand_and_against_pairwise_ece():
    probs, labels = [0.85, 0.3, 0.65], [1.0, 0.0, 0.5]
    bins = P.reliability_bins(probs, labels)
    # both orders: (0.85, 1), (0.3, 0), (0.65, .5), (0.15, 0), (0.7, 1), (0.35, .5): bins 8, 3, 6, 1, 7, 3
    assert [b["low"] for b in bins] == pytest.approx([0.1, 0.3, 0.6, 0.7, 0.8])
    assert [b["count"] for b in bins] == [1, 2, 1, 1, 1]
    b3 = bins[1]  # (0.3, 0) and (0.35, 0.5)
    assert b3["confidence"] == pytest.approx(0.325) and b3["frequency"] == pytest.approx(0.25)
    ece = sum(b["count"] / 6 * abs(b["frequency"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(pairwise_ece(probs, labels), abs=1e-12)
    with pytest.raises(ValueError):
        P.reliability_bins([0.5], [])
