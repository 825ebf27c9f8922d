"""Judges without a language model's verdict: a reward model, or a Python function.

A Bradley-Terry reward model already is a pairwise judge: P(a ≻ b) = σ(r_a − r_b) (Bradley and
Terry 1952; Ouyang et al. 2022, eq. 1), divided by the temperature T fitted on held-out pairs when
the reward model folder stores one (σ((r_a − r_b) / T), temperature scaling, Guo et al. 2017), so
that its soft labels are calibrated probabilities. It scores each response on its own, so the order in which
the pair is shown cannot matter and no position bias is measured. A Python function is the way in
for rules, heuristics or any other model.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Callable, Sequence

from rlhfkit.feedback.judges.base import Judge, Prompt, Verdict, check_batch, two_choice_probability

log = logging.getLogger(__name__)


class RewardModelJudge(Judge):
    """P(a better) = σ((r_a − r_b) / T) from a reward model folder (or ensemble folder), or any object
    with ``score(prompts, responses) -> (N,)`` such as :class:`rlhfkit.models.reward_model.RewardScorer`.
    T is the scorer's ``temperature`` (the folder's stored one; 1 for an object without it)."""

    def __init__(self, model_dir_or_scorer, *, batch_size: int = 64, name: str | None = None):
        if isinstance(model_dir_or_scorer, (str, Path)):
            from rlhfkit.models import reward_model

            self.scorer = reward_model.load_scorer(model_dir_or_scorer, batch_size=batch_size)
            name = name or f"reward:{Path(model_dir_or_scorer).name}"
        else:
            self.scorer = model_dir_or_scorer
        self.name = name or "reward"
        self._warned_criterion = False

    def compare_batch(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                      *, criterion: str | None = None) -> list[Verdict]:
        check_batch(prompts, responses_a, responses_b)
        if criterion is not None and not self._warned_criterion:
            self._warned_criterion = True
            log.warning("judge %s is a reward model: it cannot take a criterion, so %r is ignored",
                        self.name, criterion)
        n = len(prompts)
        if n == 0:
            return []
        # one call scores every a and every b, so an ensemble or a remote scorer batches them together
        scores = [float(s) for s in self.scorer.score(list(prompts) * 2, list(responses_a) + list(responses_b))]
        t = float(getattr(self.scorer, "temperature", 1.0))
        return [Verdict(prob_a=two_choice_probability(scores[i] / t, scores[n + i] / t)) for i in range(n)]


def accepts_criterion(fn: Callable) -> bool:
    """Whether ``fn`` takes a ``criterion`` keyword (by name or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "criterion" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class PythonJudge(Judge):
    """``fn(prompt, a, b) -> P(a better)`` in [0, 1], from a callable or ``"package.module:function"``.
    A function that takes ``criterion=`` receives the comparison's criterion (or the default one)."""

    def __init__(self, fn: Callable | str, name: str | None = None, *, criterion: str | None = None):
        if isinstance(fn, str):
            from rlhfkit.train.rl.reward_sources import load_function

            name = name or fn
            fn = load_function(fn)
        self.fn, self.criterion = fn, criterion
        self.name = name or getattr(fn, "__name__", "python")
        self._pass_criterion = accepts_criterion(fn)

    def compare_batch(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                      *, criterion: str | None = None) -> list[Verdict]:
        check_batch(prompts, responses_a, responses_b)
        criterion = self.criterion if criterion is None else criterion
        kwargs = {"criterion": criterion} if self._pass_criterion and criterion is not None else {}
        verdicts = []
        for i, (prompt, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
            value = self.fn(prompt, a, b, **kwargs)
            try:
                prob = math.nan if isinstance(value, (str, bytes)) else float(value)
            except (TypeError, ValueError):
                prob = math.nan
            if not 0.0 <= prob <= 1.0:  # also false for nan
                raise ValueError(f"judge function {self.name} returned {value!r} for comparison {i}: "
                                 "it must return P(a better), a number in [0, 1]")
            verdicts.append(Verdict(prob_a=prob))
        return verdicts
