"""``report.html``: the demo's results in one self-contained file beside ``report.md``.

Every figure is a PNG from :mod:`rlhfkit.evaluate.plots` embedded as a base64 ``data:`` URI; there
is no script, stylesheet or image from anywhere else, so the file opens offline and can be mailed.
Every piece of text from the run (method names, annotator descriptions) is HTML-escaped. A figure
whose data the run does not have (a quick demo, a run with some methods left out) is replaced by a
sentence saying so.

What lives here: turning ``summary.json`` (its ``methods`` and ``limitations``) into the page.
What does not: the figures themselves (``plots``), the measurements (``rlhfkit.demo.steps.limitations``),
the methods table's cells (shared with ``report.md``: :func:`rlhfkit.evaluate.report.methods_rows`).
"""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path

from rlhfkit.evaluate import plots
from rlhfkit.evaluate.report import methods_rows

ONLINE = ("ppo", "ppo_no_kl", "grpo", "rloo")
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
p.missing { color: #888; font-style: italic; }
"""


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float) and abs(x) >= 1e5:  # e.g. a fitted peak far beyond reach: 8.43e+46, not 47 digits
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _figure(title: str, png: bytes | None, caption: str, missing: str) -> str:
    parts = [f"<h2>{escape(title)}</h2>"]
    if png is None:
        parts.append(f'<p class="missing">{escape(missing)}</p>')
    else:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="{escape(title)}" src="data:image/png;base64,{data}">')
        parts.append(f"<p>{escape(caption)}</p>")
    return "\n".join(parts)


def _numeric(cell: str) -> bool:
    """A number (maybe with an interval) or the "–" of a missing one: right-aligned."""
    return cell == "–" or (bool(cell) and (cell[0].isdigit() or (cell[0] == "-" and cell[1:2].isdigit())))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{escape(c)}</td>" if _numeric(c) else f'<td class="text">{escape(c)}</td>'
                                       for c in row) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _overoptimization(lim: dict) -> str:
    over = lim.get("overoptimization") or {}
    rl, bon = over.get("rl") or {}, over.get("best_of_n") or {}
    png = plots.overoptimization({k: v for k, v in rl.items()}, {k: v.get("fit") for k, v in rl.items() if v.get("fit")},
                                 bon.get("rows"), bon.get("fit"))
    rows = []
    for name, entry in rl.items():
        fit = entry.get("fit") or {}
        rows.append([f"{name} (RL form, per step)", _num(fit.get("alpha")), _num(fit.get("beta")),
                     _num(fit.get("kl_peak")), _num(max(k * k for k in entry["d"]) if entry.get("d") else None)])
    if bon:
        fit = bon.get("fit") or {}
        rows.append([f"best-of-n from SFT ({bon.get('prompts')} prompts × {bon.get('samples_per_prompt')} samples)",
                     _num(fit.get("alpha")), _num(fit.get("beta")), _num(fit.get("kl_peak")),
                     _num(max(r["kl"] for r in bon["rows"]) if bon.get("rows") else None)])
    caption = ("Gain in gold (dots) and proxy (crosses) reward over the initial policy against d = √KL to SFT, "
               "with Gao et al.'s (2022) forms fitted to the gold gain: RL d(α − β log d), best-of-n d(α − β d) "
               "with KL_bon = log n − (n − 1)/n. Gao et al. fit the difference from the initial policy, and so "
               "do we (step 1 of each RL run; n = 1 for best-of-n). The fitted gold peaks at d* = exp(α/β − 1) "
               "(RL) or α/(2β) (best-of-n); a peak far beyond the KL reached is an extrapolation.")
    out = _figure("Reward over-optimisation", png, caption,
                  "No RL run logged gold reward and no best-of-n curve was measured in this run.")
    if rows:
        out += "\n" + _table(["curve", "α", "β", "KL where fitted gold peaks", "largest KL measured"], rows)
    return out


def _labelling_cost(lim: dict, summary: dict) -> str:
    lc = lim.get("labelling_cost") or {}
    rm = summary.get("methods", {}).get("reward_model") or {}
    png = plots.labelling_cost(lc.get("curves") or {}, rm.get("accuracy_vs_gold"))
    reach = lc.get("labels_to_95pct") or {}
    caption = (f"Accuracy against gold on {lc.get('heldout_pairs')} held-out pairs of a linear Bradley–Terry head on "
               f"frozen SFT features (the last-token hidden state), NOT the full reward model, trained on growing "
               f"sets of the panel's labelled pairs (pool of {lc.get('pool')}): random order vs the labelling app's "
               f"uncertainty sampling. Labels to reach 95% of the whole pool's accuracy "
               f"({_num(lc.get('final_accuracy'))}): random {reach.get('random', '–')}, active {reach.get('active', '–')}. "
               f"Each curve is the mean over {lc.get('repeats', 1)} seeds. The dashed line is the full reward model's accuracy vs gold.")
    return _figure("Labelling cost", png, caption, "The labelling-cost curve was not measured in this run.")


def _annotators(lim: dict) -> str:
    ann = lim.get("annotators")
    if not ann:
        return '<h2>Annotator disagreement</h2>\n<p class="missing">Not measured in this run.</p>'
    rows = [[name, e.get("description", ""), _num(e.get("agreement_with_gold")), _num(e.get("reward_model_accuracy"))]
            for name, e in ann.get("per_annotator", {}).items()]
    return ("<h2>Annotator disagreement</h2>\n"
            f"<p>Every annotator of the panel labelled each of the {ann.get('pairs')} held-out pairs once. "
            f"Krippendorff's α (nominal) over those labels: {_num(ann.get('krippendorff_alpha'))} "
            "(1 = perfect agreement, 0 = chance). The reward model's accuracy against gold is "
            f"{_num(ann.get('reward_model_accuracy_vs_gold'))}.</p>\n"
            + _table(["annotator", "leaning", "agreement with gold", "reward model's accuracy vs this annotator"], rows))


def _seeds(seeds: dict | None) -> str:
    """The ``--seeds`` runs: a figure of every seed's win rate and a table of mean, spread and range."""
    if not seeds:
        return ("<h2>Across training seeds</h2>\n<p class=\"missing\">This run trained each method on one seed "
                "(<code>rlhfkit demo --seeds 0,1,2</code> retrains them on several).</p>")
    per = {name: {s: [e["win_rate_vs_sft"], *(e.get("win_rate_vs_sft_ci") or [])] for s, e in r["per_seed"].items()}
           for name, r in seeds.items()}
    rows = [[name, _num(r["win_rate_vs_sft_mean"]), _num(r["win_rate_vs_sft_std"]),
             f"{_num(r['win_rate_vs_sft_min'])} – {_num(r['win_rate_vs_sft_max'])}",
             "yes" if r["all_above_half"] else "no"] for name, r in seeds.items()]
    caption = ("Win rate vs SFT of each method retrained on every training seed (same task, SFT model, labels, "
               "reward model, evaluation prompts and SFT samples); the bar is the mean over seeds.")
    return (_figure("Across training seeds", plots.seed_win_rates(per), caption, "No seed was compared with SFT.")
            + "\n" + _table(["method", "mean", "std (n − 1)", "range", "every interval above 0.5"], rows))


def render_html(summary: dict) -> str:
    """The whole page for a summary (``summary.json``'s dict)."""
    methods = summary.get("methods", {})
    lim = summary.get("limitations") or {}
    policies = {k: v for k, v in methods.items() if isinstance(v, dict) and "gold_reward" in v}
    header, rows = methods_rows(methods)
    intro = (f"Built-in task {summary.get('task')}, seed {summary.get('seed')}, precision {summary.get('precision')}"
             + (" (quick run: tiny budgets, numbers are not meaningful)" if summary.get("quick") else "")
             + ". Every policy is sampled on the same held-out prompts and scored by the task's gold reward; win rates "
             "compare each sample with the baseline's samples of the same prompt (ties count half), with 95% "
             "bootstrap intervals over prompts.")
    sections = [f"<h1>rlhfkit demo report</h1>\n<p>{escape(intro)}</p>", "<h2>Methods</h2>", _table(header, rows)]

    curves = {k: v for k, v in (lim.get("training_curves") or {}).items() if k in ONLINE}
    sections.append(_figure(
        "Training curves", plots.training_curves(curves),
        "Proxy (reward-model) and gold reward of each step's training samples and their KL to SFT, per online method.",
        "No online method (PPO, GRPO, RLOO) ran in this run, so there are no training curves."))
    sections.append(_overoptimization(lim))
    rel = lim.get("reliability") or {}
    sections.append(_figure(
        "Reward model reliability", plots.reliability_diagram(rel.get("bins") or [], rel.get("ece")),
        f"Held-out pairs ({rel.get('pairs')}), each counted in both orders: the panel's vote share for a response "
        "against the reward model's P = σ(r_a − r_b) (no temperature), in ten equal-width bins.",
        "The reward model's held-out pairs were not scored in this run."))
    win = {k: [v["win_rate_vs_sft"], *v.get("win_rate_vs_sft_ci", [])] for k, v in policies.items()
           if "win_rate_vs_sft" in v}
    sections.append(_figure("Win rate against SFT", plots.win_rates(win),
                            "Gold win rate of each method's samples against SFT's, with its 95% bootstrap interval "
                            "over prompts; 0.5 = no better than SFT.", "No method was compared with SFT in this run."))
    sections.append(_seeds(summary.get("seeds")))
    kl_points = {k: {"kl": v.get("kl_to_sft"), "distinct_2": v.get("distinct_2"), "mean_length": v.get("mean_length")}
                 for k, v in policies.items() if v.get("kl_to_sft") is not None}
    if kl_points and "sft" in policies:  # SFT is the reference: KL 0 by definition
        kl_points["sft"] = {"kl": 0.0, "distinct_2": policies["sft"].get("distinct_2"),
                            "mean_length": policies["sft"].get("mean_length")}
    sections.append(_figure("Diversity and length against KL", plots.diversity_length_vs_kl(kl_points),
                            "Distinct-2 (mode collapse shows as a drop) and mean response length (length bias) of "
                            "each method's samples against their KL to SFT.",
                            "No method measured its KL to SFT in this run."))
    sections.append(_figure("Sycophancy and contrarianism", plots.sycophancy_bars(policies),
                            "Share of the task's probes where a method agrees with a false claim (sycophancy) or "
                            "disputes a true one (contrarian).", "No method was probed in this run."))
    sections.append(_labelling_cost(lim, summary))
    sections.append(_annotators(lim))
    timings = summary.get("timings_s") or {}
    if timings:
        sections.append("<h2>Timings (seconds)</h2>\n" + _table(["stage", "seconds"],
                                                                [[k, str(v)] for k, v in timings.items()]))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>rlhfkit demo report</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(sections) + "\n</body>\n</html>\n")


def write_html_report(out: Path, summary: dict) -> Path:
    """Write ``<out>/report.html`` and return its path."""
    path = Path(out) / "report.html"
    path.write_text(render_html(summary), encoding="utf-8")
    return path
