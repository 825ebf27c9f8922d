"""Active learning: serve the items a reward model is least sure about first.

A scorer is any object with ``score(prompts, responses) -> (mean, std | None)``, one reward per
(prompt, response) pair; ``std`` is the spread over an ensemble, or None for a single model.
For each pair of responses (a, b) of an item:
- with an ensemble: uncertainty = sqrt(std_a² + std_b²), the spread of the reward difference
  if the members' errors on a and b are independent;
- with one model: uncertainty = 1 - |2·P(a better) - 1|, P = σ(r_a - r_b): 1 at P = 0.5, 0 when sure.
An item's priority is the mean over its pairs; items are served highest priority first.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Protocol


class Scorer(Protocol):
    def score(self, prompts: list[str], responses: list[str]) -> tuple[list[float], list[float] | None]: ...


def _score(scorer, prompts: list, responses: list) -> tuple[list[float], list[float] | None]:
    """(mean, std or None) from a scorer. Also takes rlhfkit's RewardScorer, whose ``score`` returns the
    mean alone and whose ``score_with_std`` gives the spread of an ensemble (of more than one member)."""
    if hasattr(scorer, "score_with_std") and getattr(scorer, "ensemble_size", 1) > 1:
        mean, std = scorer.score_with_std(prompts, responses)
    else:
        out = scorer.score(prompts, responses)
        mean, std = out if isinstance(out, tuple) else (out, None)
    return [float(m) for m in mean], None if std is None else [float(s) for s in std]


def pair_uncertainty(mean_a: float, mean_b: float, std_a: float | None = None, std_b: float | None = None) -> float:
    if std_a is not None and std_b is not None:
        return math.sqrt(std_a**2 + std_b**2)
    p = 1.0 / (1.0 + math.exp(-(mean_a - mean_b)))
    return 1.0 - abs(2.0 * p - 1.0)


def priorities(scorer: Scorer, items: list[dict], *, batch_size: int = 256) -> list[float]:
    """One priority per item (higher = more uncertain = served sooner)."""
    flat = [(item["prompt"], r) for item in items for r in item["responses"]]
    means: list[float] = []
    stds: list[float] | None = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        mean, std = _score(scorer, [p for p, _ in chunk], [r for _, r in chunk])
        if len(mean) != len(chunk) or (std is not None and len(std) != len(chunk)):
            raise ValueError(f"the scorer returned {len(mean)} scores for {len(chunk)} responses")
        means.extend(mean)
        stds = None if std is None or stds is None else stds + std
    out, at = [], 0
    for item in items:
        k = len(item["responses"])
        m = means[at:at + k]
        s = stds[at:at + k] if stds is not None else [None] * k
        pairs = [pair_uncertainty(m[a], m[b], s[a], s[b]) for a, b in combinations(range(k), 2)]
        out.append(sum(pairs) / len(pairs))
        at += k
    return out


def load_scorer(model_dir: str) -> Scorer:
    from rlhfkit.models.reward_model import load_scorer as load  # heavy (torch); only when asked for

    return load(model_dir)
