"""Reward-model metrics on preference sets, in pure Python: strict pairwise accuracy, best-of-K credit,
the reliability table behind ECE, accuracy by subset or annotator, and an ensemble's disagreement.

Here: the arithmetic of ``rlhfkit eval-rm`` (issue 14 §2), each function a pure function of scores.
Not here: reading files and scoring (:mod:`rlhfkit.evaluate.rm_run`), the generic metrics that the
policy evaluation shares (:mod:`rlhfkit.evaluate.metrics`: ECE, temperature, Pearson).

Conventions (those of RewardBench, Lambert et al. 2024, and RewardBench 2, Malik et al. 2025):
a pair is right only when r(chosen) > r(rejected) **strictly** — a tie counts as wrong, as a
reward model that gives every response the same score must score 0, not 0.5; undefined values (no
data) are ``float("nan")``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from rlhfkit.evaluate.metrics import NAN, sigmoid


# ----------------------------------------------------------------------------- accuracy
def strict_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs with ``chosen[i] > rejected[i]`` strictly (a tie is wrong, as in RewardBench).
    NaN for no pairs."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen scores but {len(rejected)} rejected")
    if not chosen:
        return NAN
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def best_of_k_credit(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Credit of one best-of-K record (RewardBench 2 style: one chosen, several rejected responses).

    The reward model "picks" its top-scored response, ties broken uniformly at random; the credit is
    the probability that the pick is a chosen response: (chosen among the top-tied) / (all top-tied).
    With one chosen that is 1 when it scores strictly above every rejected, 1/k when it ties with
    k − 1 rejected for the top score, 0 when a rejected scores above it. With several chosen, any of
    them on top earns the credit. Every score counts, so K = len(chosen) + len(rejected).
    """
    if not chosen or not rejected:
        raise ValueError(f"need at least one chosen and one rejected score, got {len(chosen)} and {len(rejected)}")
    top = max(max(chosen), max(rejected))
    chosen_on_top = sum(c == top for c in chosen)
    return chosen_on_top / (chosen_on_top + sum(r == top for r in rejected))


def accuracy_by_group(credits: Sequence[float], groups: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Mean credit per group: ``{name: {"accuracy": mean, "n": count}}``, names sorted.

    ``groups[i]`` names item i's group: a string (a RewardBench ``subset``), a list of names (every
    annotator who labelled the item: the item counts once for each), or None (in no group).
    Names are compared as strings, so annotator ids 3 and "3" are one annotator.
    """
    if len(credits) != len(groups):
        raise ValueError(f"{len(credits)} credits but {len(groups)} groups")
    sums: dict[str, list[float]] = {}
    for credit, group in zip(credits, groups):
        names = group if isinstance(group, (list, tuple)) else [group]
        for name in dict.fromkeys(str(n) for n in names if n is not None):  # a name listed twice counts once
            sums.setdefault(name, []).append(float(credit))
    return {name: {"accuracy": sum(v) / len(v), "n": len(v)} for name, v in sorted(sums.items())}


# ----------------------------------------------------------------------------- calibration
def reliability_bins(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> list[dict[str, Any]]:
    """The reliability diagram's table (DeGroot & Fienberg 1983; Guo et al. 2017, §2, fig. 1).

    Equal-width bins on [0, 1], bin b = [b/n, (b+1)/n) (p = 1.0 goes in the last bin), the same bins
    as :func:`rlhfkit.evaluate.metrics.expected_calibration_error`. Per bin: ``low``, ``high``,
    ``count``, ``confidence`` (mean p) and ``accuracy`` (mean label; soft labels allowed), both None
    for an empty bin (JSON null, so a plot skips it). ECE = Σ_b count_b / N · |accuracy_b − confidence_b|
    (:func:`ece_from_bins`).
    """
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities but {len(labels)} labels")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    members: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for p, y in zip(probs, labels):
        p, y = float(p), float(y)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability out of [0, 1]: {p}")
        if not 0.0 <= y <= 1.0:
            raise ValueError(f"label out of [0, 1]: {y}")
        members[min(int(p * n_bins), n_bins - 1)].append((p, y))
    table = []
    for b, inside in enumerate(members):
        count = len(inside)
        table.append({"low": b / n_bins, "high": (b + 1) / n_bins, "count": count,
                      "confidence": sum(p for p, _ in inside) / count if count else None,
                      "accuracy": sum(y for _, y in inside) / count if count else None})
    return table


def pairwise_reliability_bins(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> list[dict[str, Any]]:
    """:func:`reliability_bins` of preference pairs counted in both orders, (p, y) and (1 − p, 1 − y),
    the entries of :func:`rlhfkit.evaluate.metrics.pairwise_ece` (whose docstring says why: pairs are
    stored chosen-first, so one order alone makes every hard label 1). So
    ``ece_from_bins(pairwise_reliability_bins(p, y)) == pairwise_ece(p, y)``."""
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities but {len(labels)} labels")
    both_probs = [float(p) for p in probs] + [1.0 - float(p) for p in probs]
    both_labels = [float(y) for y in labels] + [1.0 - float(y) for y in labels]
    return reliability_bins(both_probs, both_labels, n_bins)


def ece_from_bins(table: Sequence[dict[str, Any]]) -> float:
    """Σ_b (count_b / N) · |accuracy_b − confidence_b| over a :func:`reliability_bins` table; NaN when empty."""
    total = sum(b["count"] for b in table)
    if not total:
        return NAN
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"])


def pairwise_probs(margins: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Bradley–Terry P(chosen ≻ rejected) = σ(margin / T) of each pair (temperature scaling, Guo et
    al. 2017 §4.2; T = 1 is the raw model)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return [sigmoid(float(m) / temperature) for m in margins]


# ----------------------------------------------------------------------------- ensembles
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def ensemble_rewards(member_scores: Sequence[Sequence[float]], *, ensemble_lambda: float = 0.0) -> list[float]:
    """Per response, the members' mean − λ · std (population std, as
    :meth:`rlhfkit.models.reward_model.RewardScorer.score_with_std`): λ = 0 is the plain mean; λ > 0 the
    uncertainty-penalised reward of conservative ensembles (Coste et al. 2024, "Reward model ensembles
    help mitigate overoptimization", UWO). ``member_scores`` is (members, responses)."""
    if not member_scores:
        raise ValueError("no member scores")
    n = len(member_scores[0])
    if any(len(row) != n for row in member_scores):
        raise ValueError(f"members scored different numbers of responses: {[len(r) for r in member_scores]}")
    out = []
    for i in range(n):
        mean, std = _mean_std([float(row[i]) for row in member_scores])
        out.append(mean - ensemble_lambda * std)
    return out


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def ensemble_disagreement(member_scores: Sequence[Sequence[float]],
                          pairs: Sequence[tuple[int, int]]) -> dict[str, float]:
    """How much an ensemble's members disagree (members, responses) -> two numbers:

    - ``reward_std_mean``: mean over responses of the members' (population) std of the reward;
    - ``pair_order_disagreement``: share of ``pairs`` (i, j) of response indices on which the members
      do not all give r_i − r_j the same sign (−, 0 or +: one member's tie against another's order
      is a disagreement).
    Members are not put on one scale first: each folder is normalised on its own reference set.
    NaN where there are no responses / no pairs.
    """
    if not member_scores:
        raise ValueError("no member scores")
    n = len(member_scores[0])
    if any(len(row) != n for row in member_scores):
        raise ValueError(f"members scored different numbers of responses: {[len(r) for r in member_scores]}")
    stds = [_mean_std([float(row[i]) for row in member_scores])[1] for i in range(n)]
    split = [len({_sign(float(row[i]) - float(row[j])) for row in member_scores}) > 1 for i, j in pairs]
    return {"reward_std_mean": sum(stds) / n if n else NAN,
            "pair_order_disagreement": sum(split) / len(split) if split else NAN}

