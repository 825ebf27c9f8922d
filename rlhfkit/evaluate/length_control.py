"""Length-controlled win rate (AlpacaEval 2, Dubois et al. 2024, "Length-Controlled AlpacaEval").

A judge that likes long answers rewards a policy for talking more. AlpacaEval 2 removes that effect
with a generalised linear model of each comparison's outcome (Dubois et al. 2024, eq. 2)::

    P(policy ≻ baseline on comparison i) = σ(θ_m + φ_m · tanh(Δlen_i / sd_m) + γ_p)

- ``θ_m``: policy m's quality once length is accounted for;
- ``φ_m``: how much policy m gains from being longer; ``Δlen_i`` = its response length minus the
  baseline's, ``sd_m`` the standard deviation (ddof 1, as pandas' ``std``) of policy m's Δlen over
  its comparisons (0 when all Δlen are equal: the length term then drops out);
- ``γ_p``: the instruction-difficulty term of prompt p, shared by every policy evaluated on the same
  prompts (only with ``difficulty=True``), with an L2 penalty ``l2 / 2 · Σ γ_p²`` (a N(0, 1/l2)
  prior: without it θ and γ are not identifiable, as θ + c and γ − c fit alike).

The fit maximises the likelihood of the (soft) outcomes y_i ∈ [0, 1] (a tie is ½: a soft-label
logistic regression) by Newton's method with a backtracking line search, in float64, from zero:
deterministic. A tiny ridge ``ridge / 2 · (Σθ² + Σφ²)`` (1e-6) keeps the Hessian invertible and the
estimate finite when the outcomes are separable (a policy that wins every comparison).

The length-controlled win rate is the predicted win rate with Δlen set to 0: σ(θ_m), or with the
difficulty term the mean over prompts of σ(θ_m + γ_p) (AlpacaEval's "counterfactual" win rate). It is
a fraction in [0, 1] here (AlpacaEval prints 100×). Lengths are the caller's: rlhfkit passes
whitespace words, as everywhere in :mod:`rlhfkit.evaluate.metrics` (AlpacaEval uses characters; the
tanh(Δ / sd) feature is unchanged by the unit's scale).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Sequence

import torch

from rlhfkit.evaluate.metrics import NAN, percentile_interval, sigmoid

DEFAULT_L2 = 1.0
"""L2 penalty on the difficulty terms γ_p (the precision of their N(0, 1/l2) prior)"""
DEFAULT_RIDGE = 1e-6
"""tiny L2 penalty on θ and φ: keeps the fit finite when the outcomes are separable"""


@dataclass
class Comparison:
    """One judged comparison: which policy, on which prompt, its length minus the baseline's, and
    the outcome (1 the policy won, 0 it lost, ½ a tie; any value in [0, 1] as a soft label)."""

    policy: int
    prompt: int
    delta_len: float
    outcome: float


@dataclass
class LCFit:
    theta: list[float]
    """θ_m per policy"""
    phi: list[float]
    """φ_m per policy"""
    gamma: list[float] | None
    """γ_p per prompt (None without the difficulty term)"""
    length_sd: list[float]
    """sd_m of Δlen per policy (ddof 1; 0 means the length term was dropped)"""
    lc_win_rate: list[float]
    """per policy: σ(θ_m), or the mean over its prompts of σ(θ_m + γ_p)"""
    raw_win_rate: list[float]
    """per policy: the mean outcome of its comparisons"""
    iterations: int
    converged: bool


def length_feature(delta_len: float, sd: float) -> float:
    """tanh(Δlen / sd); 0 when sd is 0 (every Δlen equal: nothing to control)."""
    return math.tanh(delta_len / sd) if sd > 0 else 0.0


def _length_sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def fit_length_controlled(comparisons: Sequence[Comparison], *, n_policies: int | None = None,
                          n_prompts: int | None = None, difficulty: bool = False, l2: float = DEFAULT_L2,
                          ridge: float = DEFAULT_RIDGE, max_iter: int = 100, tol: float = 1e-9) -> LCFit:
    """Fit θ, φ (and γ) by penalised maximum likelihood; see the module docstring for the model.

    ``n_policies`` / ``n_prompts`` default to 1 + the largest index seen. Every policy needs at
    least one comparison. Newton stops when the largest gradient entry is below ``tol`` (per
    comparison) or after ``max_iter`` steps (``converged`` says which).
    """
    if not comparisons:
        raise ValueError("no comparisons to fit")
    if l2 <= 0 and difficulty:
        raise ValueError(f"the difficulty term needs an L2 penalty > 0 (θ and γ are not identifiable), got {l2}")
    n_pol = n_policies if n_policies is not None else 1 + max(c.policy for c in comparisons)
    n_pro = n_prompts if n_prompts is not None else 1 + max(c.prompt for c in comparisons)
    for c in comparisons:
        if not 0.0 <= c.outcome <= 1.0:
            raise ValueError(f"outcome must lie in [0, 1], got {c.outcome}")
        if not (0 <= c.policy < n_pol and 0 <= c.prompt < n_pro):
            raise ValueError(f"comparison of policy {c.policy} on prompt {c.prompt} is out of range")
    by_policy: list[list[float]] = [[] for _ in range(n_pol)]
    for c in comparisons:
        by_policy[c.policy].append(float(c.delta_len))
    if any(not d for d in by_policy):
        raise ValueError(f"policy {[i for i, d in enumerate(by_policy) if not d][0]} has no comparison")
    sds = [_length_sd(d) for d in by_policy]

    # parameters: θ_0..θ_{P-1}, φ_0..φ_{P-1}, then γ_0..γ_{n-1} with the difficulty term
    dim = 2 * n_pol + (n_pro if difficulty else 0)
    pol = torch.tensor([c.policy for c in comparisons])
    cols = [pol, n_pol + pol]
    x = torch.tensor([length_feature(c.delta_len, sds[c.policy]) for c in comparisons], dtype=torch.float64)
    vals = [torch.ones_like(x), x]
    if difficulty:
        cols.append(2 * n_pol + torch.tensor([c.prompt for c in comparisons]))
        vals.append(torch.ones_like(x))
    y = torch.tensor([float(c.outcome) for c in comparisons], dtype=torch.float64)
    penalty = torch.full((dim,), float(ridge), dtype=torch.float64)
    if difficulty:
        penalty[2 * n_pol:] = float(l2)

    def logits(w: torch.Tensor) -> torch.Tensor:  # (N,)
        return sum(w[col] * val for col, val in zip(cols, vals))

    def loss(w: torch.Tensor) -> float:  # −log-likelihood of soft labels + penalties
        z = logits(w)
        return float((torch.nn.functional.softplus(z) - y * z).sum() + 0.5 * (penalty * w * w).sum())

    w = torch.zeros(dim, dtype=torch.float64)
    current = loss(w)
    converged, iterations = False, 0
    for iterations in range(1, max_iter + 1):
        p = torch.sigmoid(logits(w))
        residual, weight = p - y, p * (1 - p)  # dL/dz and d²L/dz² per comparison
        grad = penalty * w
        hess = torch.diag(penalty).reshape(-1)
        for col, val in zip(cols, vals):
            grad.index_add_(0, col, residual * val)
            for col2, val2 in zip(cols, vals):
                hess.index_add_(0, col * dim + col2, weight * val * val2)
        if float(grad.abs().max()) < tol * len(comparisons):
            converged = True
            break
        step = torch.linalg.solve(hess.reshape(dim, dim), grad)
        t = 1.0
        while t > 1e-10:  # backtracking (Armijo): Newton's full step can overshoot far from the optimum
            candidate = w - t * step
            value = loss(candidate)
            if value <= current - 1e-4 * t * float(grad @ step):
                break
            t *= 0.5
        if t <= 1e-10:  # no decrease possible in floating point: at the optimum to machine precision
            converged = True
            break
        w, current = candidate, value

    theta = [float(v) for v in w[:n_pol]]
    phi = [float(v) for v in w[n_pol: 2 * n_pol]]
    gamma = [float(v) for v in w[2 * n_pol:]] if difficulty else None
    prompts_of: list[set[int]] = [set() for _ in range(n_pol)]
    outcomes: list[list[float]] = [[] for _ in range(n_pol)]
    for c in comparisons:
        prompts_of[c.policy].add(c.prompt)
        outcomes[c.policy].append(float(c.outcome))
    lc = []
    for m in range(n_pol):
        if gamma is None:
            lc.append(sigmoid(theta[m]))
        else:
            lc.append(sum(sigmoid(theta[m] + gamma[p]) for p in sorted(prompts_of[m])) / len(prompts_of[m]))
    return LCFit(theta=theta, phi=phi, gamma=gamma, length_sd=sds, lc_win_rate=lc,
                 raw_win_rate=[sum(o) / len(o) for o in outcomes], iterations=iterations, converged=converged)


def bootstrap_lc_ci(comparisons: Sequence[Comparison], *, n_prompts: int, n_policies: int, difficulty: bool,
                    l2: float = DEFAULT_L2, n_resamples: int = 200, confidence: float = 0.95,
                    seed: int = 0) -> list[tuple[float, float]]:
    """Percentile bootstrap interval of each policy's LC win rate with the prompt as the unit: draw
    ``n_prompts`` prompts with replacement (``random.Random(seed)``), each draw a new prompt (its own
    γ), refit, and take the (1 − c)/2 and (1 + c)/2 quantiles (interpolated as
    :func:`rlhfkit.evaluate.metrics.bootstrap_mean_ci` does) of each policy's refitted LC win rate."""
    if n_resamples < 1:
        return [(NAN, NAN)] * n_policies
    by_prompt: list[list[Comparison]] = [[] for _ in range(n_prompts)]
    for c in comparisons:
        by_prompt[c.prompt].append(c)
    rng = random.Random(seed)
    draws: list[list[float]] = [[] for _ in range(n_policies)]
    for _ in range(n_resamples):
        sample = []
        for new, old in enumerate(rng.choices(range(n_prompts), k=n_prompts)):
            sample += [Comparison(c.policy, new, c.delta_len, c.outcome) for c in by_prompt[old]]
        if len({c.policy for c in sample}) < n_policies:
            continue  # a policy drew none of its prompts: this resample says nothing about it
        fit = fit_length_controlled(sample, n_policies=n_policies, n_prompts=n_prompts, difficulty=difficulty, l2=l2)
        for m in range(n_policies):
            draws[m].append(fit.lc_win_rate[m])
    return [percentile_interval(sorted(d), confidence) for d in draws]
