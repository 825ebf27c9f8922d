"""The report's figures: one function per figure, plain data in (dicts and lists), PNG bytes out.

Every function returns ``None`` when it has nothing to draw (a quick demo without some method), so
the caller can say so in a sentence instead of showing an empty frame. matplotlib runs on the Agg
backend (no display needed) and is imported on first use.

What lives here: the figures and ``reliability_bins`` (the binning of ``metrics.pairwise_ece``, kept
per bin for the diagram). What does not: reading run folders or writing HTML (``html_report``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def reliability_bins(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> list[dict]:
    """Per-bin (confidence, observed frequency, count) of pairwise probabilities, each pair counted
    in both orders (p, y) and (1 − p, 1 − y), binned as :func:`rlhfkit.evaluate.metrics.pairwise_ece`
    bins (equal width, bin = min(⌊p · n_bins⌋, n_bins − 1)), so Σ count/N · |acc − conf| is its ECE.
    Empty bins are left out."""
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities but {len(labels)} labels")
    both = [(float(p), float(y)) for p, y in zip(probs, labels)] + [(1.0 - float(p), 1.0 - float(y))
                                                                    for p, y in zip(probs, labels)]
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for p, y in both:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability out of [0, 1]: {p}")
        bins[min(int(p * n_bins), n_bins - 1)].append((p, y))
    return [{"low": k / n_bins, "high": (k + 1) / n_bins, "confidence": sum(p for p, _ in b) / len(b),
             "frequency": sum(y for _, y in b) / len(b), "count": len(b)} for k, b in enumerate(bins) if b]


def training_curves(curves: dict[str, dict[str, list[float]]]) -> bytes | None:
    """Proxy reward, gold reward and KL to the initial policy per training step, one line per method.
    ``curves[name]`` = {"step": [...], "proxy": [...], "gold": [...], "kl": [...]}."""
    curves = {k: v for k, v in curves.items() if v and v.get("step")}
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for (name, c), color in zip(curves.items(), COLORS):
        for ax, key in zip(axes, ("proxy", "gold", "kl")):
            ax.plot(c["step"], c[key], label=name, color=color, lw=1.4)
    for ax, title in zip(axes, ("proxy reward (reward model)", "gold reward", "KL to SFT (nats / response)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def overoptimization(rl: dict[str, dict[str, list[float]]], rl_fits: dict[str, dict] | None = None,
                     bon: Sequence[dict] | None = None, bon_fit: dict | None = None) -> bytes | None:
    """Gain in proxy and gold reward over the initial policy against d = √KL, with Gao et al.'s fits.

    ``rl[name]`` = {"d": [...], "proxy_gain": [...], "gold_gain": [...]} (one point per step);
    ``rl_fits[name]`` = {"alpha", "beta"} of the RL form fitted to gold; ``bon``: rows
    {"n", "d", "proxy_gain", "gold_gain"}; ``bon_fit``: {"alpha", "beta"} of the best-of-n form.
    """
    from rlhfkit.evaluate.overoptimization import bon_form, rl_form

    rl = {k: v for k, v in (rl or {}).items() if v and v.get("d")}
    bon = list(bon or [])
    if not rl and not bon:
        return None
    plt = _plt()
    panels = (["rl"] if rl else []) + (["bon"] if bon else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    if rl:
        ax = axes["rl"]
        for (name, c), color in zip(rl.items(), COLORS):
            ax.scatter(c["d"], c["gold_gain"], s=10, color=color, label=f"{name} gold")
            ax.scatter(c["d"], c["proxy_gain"], s=10, color=color, marker="x", alpha=0.5, label=f"{name} proxy")
            fit = (rl_fits or {}).get(name)
            if fit and _finite(fit.get("alpha")) and _finite(fit.get("beta")):
                top = max(c["d"])
                xs = [top * i / 100 for i in range(101)]
                ax.plot(xs, [rl_form(x, fit["alpha"], fit["beta"]) for x in xs], color=color, lw=1.5,
                        label=f"{name} fit α={fit['alpha']:.2f} β={fit['beta']:.2f}")
        ax.set_title("RL: gain over the initial policy (step 1)", fontsize=10)
    if bon:
        ax = axes["bon"]
        d = [r["d"] for r in bon]
        ax.plot(d, [r["gold_gain"] for r in bon], "o", color=COLORS[2], label="best-of-n gold")
        ax.plot(d, [r["proxy_gain"] for r in bon], "x", color=COLORS[2], alpha=0.6, label="best-of-n proxy")
        for r in bon:
            ax.annotate(f"n={r['n']}", (r["d"], r["gold_gain"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
        if bon_fit and _finite(bon_fit.get("alpha")) and _finite(bon_fit.get("beta")):
            xs = [max(d) * i / 100 for i in range(101)]
            ax.plot(xs, [bon_form(x, bon_fit["alpha"], bon_fit["beta"]) for x in xs], color=COLORS[2],
                    label=f"fit α={bon_fit['alpha']:.2f} β={bon_fit['beta']:.2f}")
        ax.set_title("best-of-n from SFT: gain over n = 1", fontsize=10)
    for ax in axes.values():
        ax.set_xlabel("d = √KL (√nats)")
        ax.set_ylabel("reward gain")
        ax.axhline(0, color="black", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def reliability_diagram(bins: Sequence[dict], ece: float | None = None) -> bytes | None:
    """Observed preference frequency against the reward model's P(a ≻ b), per bin (``reliability_bins``)."""
    bins = [b for b in bins or [] if b.get("count")]
    if not bins:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    width = bins[0]["high"] - bins[0]["low"]
    ax.bar([b["low"] for b in bins], [b["frequency"] for b in bins], width=width, align="edge",
           edgecolor="black", color=COLORS[0], alpha=0.7, label="observed")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot([b["confidence"] for b in bins], [b["frequency"] for b in bins], "o", color=COLORS[1], ms=4,
            label="bin mean")
    ax.set_xlabel("P(a ≻ b) = σ(r_a − r_b)")
    ax.set_ylabel("panel's share preferring a")
    ax.set_title("reward-model reliability" + (f" (ECE {ece:.3f})" if _finite(ece) else ""), fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _png(fig)


def win_rates(rates: dict[str, Sequence[float]], baseline: str = "SFT") -> bytes | None:
    """Win rate against the baseline with its interval, per method: ``rates[name]`` = (rate, low, high)."""
    rates = {k: v for k, v in (rates or {}).items() if v and _finite(v[0])}
    if not rates:
        return None
    plt = _plt()
    names = list(rates)
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(names) + 1.2))
    y = list(range(len(names)))[::-1]
    x = [rates[n][0] for n in names]
    lo = [rates[n][0] - rates[n][1] if len(rates[n]) > 2 else 0 for n in names]
    hi = [rates[n][2] - rates[n][0] if len(rates[n]) > 2 else 0 for n in names]
    ax.errorbar(x, y, xerr=[lo, hi], fmt="o", color=COLORS[0], capsize=3)
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.set_xlabel(f"win rate vs {baseline} (95% interval)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def seed_win_rates(per_method: dict[str, dict[str, Sequence[float]]], baseline: str = "SFT") -> bytes | None:
    """Each training seed's win rate (with its interval) per method, and the mean over seeds:
    ``per_method[name][seed]`` = (rate, low, high)."""
    per_method = {k: v for k, v in (per_method or {}).items() if v}
    if not per_method:
        return None
    plt = _plt()
    names = list(per_method)
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(names) + 1.2))
    seeds = sorted({s for v in per_method.values() for s in v}, key=str)
    for i, name in enumerate(names):
        y0 = len(names) - 1 - i
        runs = per_method[name]
        for j, seed in enumerate(seeds):
            if seed not in runs:
                continue
            rate, *ci = runs[seed]
            y = y0 + (j - (len(seeds) - 1) / 2) * 0.15
            err = [[rate - ci[0]], [ci[1] - rate]] if len(ci) == 2 else None
            ax.errorbar([rate], [y], xerr=err, fmt="o", ms=4, capsize=2, color=COLORS[j % len(COLORS)],
                        label=f"seed {seed}" if i == 0 else None)
        mean = sum(r[0] for r in runs.values()) / len(runs)
        ax.plot([mean, mean], [y0 - 0.3, y0 + 0.3], color="black", lw=2, label="mean" if i == 0 else None)
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names[::-1])
    ax.set_xlabel(f"win rate vs {baseline} per training seed (95% interval)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def diversity_length_vs_kl(points: dict[str, dict[str, float]]) -> bytes | None:
    """Distinct-2 and mean length against KL to SFT, one point per method
    (``points[name]`` = {"kl", "distinct_2", "mean_length"})."""
    points = {k: v for k, v in (points or {}).items() if _finite(v.get("kl"))}
    if not points:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("distinct_2", "mean_length"), ("distinct-2 (diversity)", "mean length (words)")):
        for (name, p), color in zip(points.items(), COLORS):
            if _finite(p.get(key)):
                ax.scatter([p["kl"]], [p[key]], color=color, s=25)
                ax.annotate(name, (p["kl"], p[key]), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("symlog", linthresh=1.0)  # linear below KL 1, log above: one runaway method cannot squash the rest
        ax.set_xlabel("KL to SFT (nats / response, symlog)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    return _png(fig)


def sycophancy_bars(rates: dict[str, dict[str, float]]) -> bytes | None:
    """Sycophancy (agreeing with a false claim) and contrarian (disputing a true one) rates per method."""
    rates = {k: v for k, v in (rates or {}).items()
             if _finite(v.get("sycophancy_rate")) or _finite(v.get("contrarian_rate"))}
    if not rates:
        return None
    plt = _plt()
    names = list(rates)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 3.8))
    xs = list(range(len(names)))
    for offset, key, color, label in ((-0.2, "sycophancy_rate", COLORS[1], "sycophancy"),
                                      (0.2, "contrarian_rate", COLORS[0], "contrarian")):
        vals = [rates[n].get(key) for n in names]
        ax.bar([x + offset for x in xs], [v if _finite(v) else 0.0 for v in vals], width=0.4, color=color, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("rate on the task's probes")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def labelling_cost(curves: dict[str, Sequence[dict]], reference: float | None = None) -> bytes | None:
    """Accuracy vs gold against the number of labelled comparisons, one line per selection strategy
    (``curves[strategy]`` = rows {"labels", "accuracy"}); ``reference``: a horizontal line (e.g. the
    full reward model's accuracy)."""
    curves = {k: list(v) for k, v in (curves or {}).items() if v}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, rows), color in zip(curves.items(), COLORS):
        ax.plot([r["labels"] for r in rows], [r["accuracy"] for r in rows], "o-", color=color, label=name, ms=4)
    if _finite(reference):
        ax.axhline(reference, color="gray", ls="--", lw=1, label="full reward model")
    ax.set_xscale("log")
    ax.set_xlabel("labelled comparisons")
    ax.set_ylabel("accuracy vs gold (held-out pairs)")
    ax.set_title("linear head on frozen SFT features", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
