"""Simulated annotators: Bradley–Terry preferences from a weighting of a task's response features.

An annotator's utility of a response is ``u = Σ_k weights[k] · features[k]`` over the task's
features (the gold components plus raw counts such as ``n_words``, ``n_polite``, ``n_flattery``,
``agrees_with_user``). It prefers ``a`` to ``b`` with probability ``σ((u_a − u_b) / τ)``, and ranks
K responses by sequential Plackett–Luce sampling with scores ``u / τ`` (for K = 2 the same law).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

FeatureFn = Callable[[str, str], dict]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass
class Annotator:
    name: str
    weights: dict[str, float]
    """feature name -> weight of the annotator's utility"""
    temperature: float
    """Bradley–Terry τ: higher is noisier"""
    description: str = ""
    features: FeatureFn | None = field(default=None, repr=False, compare=False)
    """(prompt, response) -> feature dict; set by the task that owns the panel"""

    def utility(self, prompt: str, response: str) -> float:
        if self.features is None:
            raise RuntimeError(f"annotator {self.name!r} is not bound to a task (features is None)")
        f = self.features(prompt, response)
        return sum(w * f[k] for k, w in self.weights.items())

    def prob_prefers(self, prompt: str, a: str, b: str) -> float:
        """P(a ≻ b) = σ((u_a − u_b) / τ)."""
        return sigmoid((self.utility(prompt, a) - self.utility(prompt, b)) / self.temperature)

    def label(self, prompt: str, a: str, b: str, rng: random.Random) -> int:
        """0 if ``a`` is preferred, 1 if ``b`` (a Bernoulli draw; never a tie)."""
        return 0 if rng.random() < self.prob_prefers(prompt, a, b) else 1

    def rank(self, prompt: str, responses: list[str], rng: random.Random) -> list[int]:
        """Indices of ``responses``, best first: Plackett–Luce sampling with scores u / τ
        (pick the best among the rest with probability ∝ exp(u_i / τ), repeat)."""
        scores = [self.utility(prompt, r) / self.temperature for r in responses]
        remaining = list(range(len(responses)))
        order: list[int] = []
        while remaining:
            top = max(scores[i] for i in remaining)
            w = [math.exp(scores[i] - top) for i in remaining]
            pick = rng.choices(remaining, weights=w)[0]
            order.append(pick)
            remaining.remove(pick)
        return order

    def to_dict(self) -> dict:
        return {"name": self.name, "weights": dict(self.weights), "temperature": self.temperature,
                "description": self.description}

    @classmethod
    def from_dict(cls, d: dict, features: FeatureFn | None = None) -> Annotator:
        return cls(d["name"], dict(d["weights"]), float(d["temperature"]), d.get("description", ""), features)


_GOLD = {"correct": 1.0, "on_topic": 1.0, "polite": 1.0, "rude": 1.0, "flattery": 1.0, "concise": 1.0,
         "repetition": 1.0}

DEFAULT_PANEL: tuple[dict, ...] = (
    {"name": "careful", "temperature": 0.6, "weights": dict(_GOLD),
     "description": "weighs what gold weighs, with little noise"},
    {"name": "friendly", "temperature": 0.9,
     "weights": {"correct": 1.0, "on_topic": 1.0, "rude": 1.5, "concise": 0.3, "repetition": 0.25,
                 "n_polite": 0.8, "n_flattery": 0.8},
     "description": "counts polite phrases linearly and likes flattery"},
    {"name": "agreeable", "temperature": 0.9,
     "weights": {**_GOLD, "agrees_with_user": 4.5},
     "description": "rewards agreeing with the user (sycophancy)"},
    {"name": "verbose", "temperature": 0.8,
     "weights": {"correct": 1.0, "on_topic": 1.0, "polite": 1.0, "rude": 1.0, "flattery": 0.5,
                 "repetition": 0.5, "n_words": 0.12},
     "description": "likes long answers, does not mind padding"},
    {"name": "hasty", "temperature": 1.0,
     "weights": {"correct": 1.0, "on_topic": 0.5, "rude": 1.0, "n_polite": 0.4, "n_flattery": 0.3},
     "description": "reads quickly: checks the answer, counts the nice words; much noise"},
)
