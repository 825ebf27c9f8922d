"""``report.md``: the methods side by side on the gold axes, with examples and the run's timings."""

from __future__ import annotations

from pathlib import Path

COLUMNS = [
    ("gold_reward", "gold reward"),
    ("win_rate_vs_sft", "win rate vs SFT"),
    ("win_rate_vs_pretrained", "win rate vs pre-trained"),
    ("kl_to_sft", "KL to SFT"),
    ("proxy_reward", "proxy reward"),
    ("mean_length", "mean length"),
    ("distinct_2", "distinct-2"),
    ("sycophancy_rate", "sycophancy"),
    ("contrarian_rate", "contrarian"),
]


def _fmt(value, ci=None) -> str:
    if value is None:
        return "–"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if ci:
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def _interval_caption(intervals: dict | None) -> str:
    """How the win-rate intervals were computed, from summary.json's ``intervals``."""
    if not intervals:
        return "The intervals' method is not recorded in this summary."
    if intervals.get("method") == "bootstrap":
        unit = intervals["unit"]
        return (f"Brackets: {intervals['confidence']:.0%} percentile bootstrap interval with the {unit} as the unit "
                f"(a {unit}'s win is the mean over its sample pairs; {intervals['n_resamples']:,} resamples "
                f"of the {unit}s).")
    return f"Brackets: {intervals['confidence']:.0%} {intervals.get('method')} interval over {intervals.get('unit')}s."


def methods_rows(methods: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The methods table as plain text cells: (header, rows), each row [method label, cell, ...].
    Shared by the markdown table here and the HTML one (``rlhfkit.evaluate.html_report``)."""
    methods = {k: v for k, v in methods.items() if isinstance(v, dict) and "gold_reward" in v}
    used = [(k, title) for k, title in COLUMNS if any(k in m for m in methods.values())]
    rows = []
    for name, entry in methods.items():
        label = f"{name} ({entry['variant']})" if entry.get("variant") else name  # e.g. "grpo (Dr. GRPO, …)"
        rows.append([label] + [_fmt(entry.get(k), entry.get(f"{k}_ci")) for k, _ in used])
    return ["method"] + [title for _, title in used], rows


def methods_table(methods: dict[str, dict]) -> str:
    header, rows = methods_rows(methods)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out: Path, summary: dict, samples: dict, task, extra_sections: list[str] | None = None) -> Path:
    parts = [
        "# rlhfkit demo report",
        "",
        f"Built-in task `{summary['task']}`, seed {summary['seed']}{' (quick run)' if summary.get('quick') else ''}. "
        "Every policy is sampled on the same held-out prompts and scored by the task's gold reward; "
        "win rates compare each sample with the baseline's samples of the same prompt by gold (ties count half). "
        + _interval_caption(summary.get("intervals")),
        "",
        methods_table(summary["methods"]),
        "",
    ]
    rm = summary["methods"].get("reward_model")
    if rm:
        parts += [
            "## Reward model",
            "",
            f"Held-out pairs of SFT samples ({rm.get('heldout_pairs')}), judged by gold and by the panel "
            "(majority of three annotators; its expected accuracy averages the majority's probability of "
            "agreeing with gold over every draw of three voters, free of the noise of one draw of votes). ECE compares P(chosen) = σ(r_c − r_r) with the panel's vote share, "
            "each pair counted in both orders; after temperature scaling, P = σ((r_c − r_r) / T) with T "
            "fitted on the other half of the held-out pairs (the stored T is fitted on all of them and only "
            "changes calibrated probabilities, not rewards):",
            "",
            "| accuracy vs gold | panel's accuracy vs gold (ceiling) | panel's expected accuracy vs gold | "
            "accuracy vs panel | ECE | ECE after temperature scaling | T | reward-length correlation |",
            "|---|---|---|---|---|---|---|---|",
            f"| {_fmt(rm.get('accuracy_vs_gold'))} | {_fmt(rm.get('panel_accuracy_vs_gold'))} | "
            f"{_fmt(rm.get('panel_accuracy_vs_gold_expected'))} | "
            f"{_fmt(rm.get('accuracy_vs_panel'))} | {_fmt(rm.get('ece'))} | {_fmt(rm.get('ece_calibrated'))} | "
            f"{_fmt(rm.get('temperature'))} | {_fmt(rm.get('length_correlation'))} |",
            "",
        ]
        split = rm.get("accuracy_vs_gold_by_separation") or {}
        if split:
            parts += ["Accuracy vs gold on the pairs gold separates by correctness (right against wrong answer, "
                      "stance or refusal) and on the rest (style): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in split.items())
                      + f"; the panel's mean preference (what unlimited labels of this panel would teach) "
                        f"agrees with gold on {_fmt(rm.get('panel_mean_accuracy_vs_gold'))}.", ""]
        per = rm.get("accuracy_per_annotator") or {}
        if per:
            parts += ["Accuracy against each annotator's labels: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in per.items()), ""]
    for section in extra_sections or []:
        parts += [section, ""]
    parts += ["## Examples", ""]
    for method, s in samples.items():
        parts.append(f"### {method}")
        parts.append("")
        for prompt, responses, golds in list(zip(s.prompts, s.responses, s.gold))[:6]:
            parts.append(f"- `{prompt.strip().splitlines()[0]}` → `{responses[0].strip()}` (gold {golds[0]:.2f})")
        parts.append("")
    parts += ["## Timings (seconds)", ""]
    parts += [f"- {k}: {v}" for k, v in summary.get("timings_s", {}).items()]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
