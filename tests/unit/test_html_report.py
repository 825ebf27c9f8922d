"""report.html from a hand-made summary: text escaped, a figure without data becomes a sentence."""

from rlhfkit.evaluate.html_report import render_html


def _summary(**limitations):
    entry = {"gold_reward": 1.0, "mean_length": 9.0, "distinct_2": 0.2, "sycophancy_rate": 0.1,
             "contrarian_rate": 0.2, "win_rate_vs_sft": 0.6, "win_rate_vs_sft_ci": [0.55, 0.65], "kl_to_sft": 0.5}
    return {"task": "facts", "seed": 0, "quick": True, "precision": "fp32",
            "methods": {"sft": {"gold_reward": 0.9, "mean_length": 8.0, "distinct_2": 0.3},
                        "<script>alert(1)</script>": entry},
            "limitations": limitations, "timings_s": {"total": 1.0}}


def test_text_is_escaped_and_missing_figures_are_sentences():
    html = render_html(_summary())
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # three figures have data (win rate, diversity vs KL, sycophancy); the others say why they are missing
    assert html.count("<img ") == 3
    assert "No online method (PPO, GRPO, RLOO) ran in this run" in html
    assert "The labelling-cost curve was not measured in this run." in html


def test_limitations_figures_and_tables():
    curve = {"step": [1, 2, 3], "proxy": [0.0, 0.2, 0.4], "gold": [1.0, 1.1, 1.05], "kl": [0.0, 0.25, 1.0]}
    html = render_html(_summary(
        training_curves={"ppo": curve},
        overoptimization={"rl": {"ppo": {"d": [0.0, 0.5, 1.0], "proxy_gain": [0, 0.2, 0.4], "gold_gain": [0, 0.1, 0.05],
                                         "fit": {"alpha": 0.25, "beta": 0.3, "kl_peak": 0.1889}}}},
        reliability={"bins": [{"low": 0.4, "high": 0.5, "confidence": 0.45, "frequency": 0.5, "count": 2}],
                     "ece": 0.05, "pairs": 1},
        labelling_cost={"curves": {"random": [{"labels": 8, "accuracy": 0.5}], "active": [{"labels": 8, "accuracy": 0.5}]},
                        "labels_to_95pct": {"random": 8, "active": 8}, "final_accuracy": 0.5, "pool": 8,
                        "heldout_pairs": 4},
        annotators={"pairs": 4, "krippendorff_alpha": 0.25, "reward_model_accuracy_vs_gold": 0.5,
                    "per_annotator": {"careful": {"description": "a <b> fan", "agreement_with_gold": 0.75,
                                                  "reward_model_accuracy": 0.5}}}))
    assert html.count("<img ") == 3 + 4
    assert "NOT the full reward model" in html and "a &lt;b&gt; fan" in html
    assert "<td>0.250</td><td>0.300</td><td>0.189</td><td>1.000</td>" in html  # α, β, KL peak, largest KL = 1²
    assert '<td class="text">a &lt;b&gt; fan</td><td>0.750</td>' in html  # text left-aligned, numbers right


def test_seeds_figure_and_table():
    summary = _summary()
    assert "rlhfkit demo --seeds 0,1,2" in render_html(summary)  # one seed: says how to get more
    per_seed = {"0": {"win_rate_vs_sft": 0.6, "win_rate_vs_sft_ci": [0.55, 0.65]},
                "1": {"win_rate_vs_sft": 0.7, "win_rate_vs_sft_ci": [0.49, 0.8]}}
    summary["seeds"] = {"ppo": {"seeds": [0, 1], "win_rate_vs_sft_mean": 0.65, "win_rate_vs_sft_std": 0.0707,
                                "win_rate_vs_sft_min": 0.6, "win_rate_vs_sft_max": 0.7, "all_above_half": False,
                                "per_seed": per_seed}}
    html = render_html(summary)
    assert html.count("<img ") == 3 + 1
    assert '<td>0.650</td><td>0.071</td><td>0.600 – 0.700</td><td class="text">no</td>' in html


def test_huge_numbers_are_written_in_scientific_form():
    from rlhfkit.evaluate.html_report import _num

    # a fitted peak at d* = exp(α/β − 1) with β near 0 lands at astronomic KL: 3 significant digits
    assert _num(8.433110220268723e46) == "8.43e+46"
    assert _num(123456.0) == "1.23e+05" and _num(99999.5) == "99999.500" and _num(0.1889) == "0.189"
