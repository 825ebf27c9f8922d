"""Reward over-optimisation: Gao et al.'s functional forms, their least-squares fits, and best-of-n.

Gao, Schulman & Hilton 2022, *Scaling Laws for Reward Model Overoptimization* (§3, eq. 1–2): with
d = √KL(π ‖ π_init) (the square root of the KL to the initial policy, in nats), the gold reward of
the optimised policy follows

- RL (PPO):     R_RL(d)  = d (α − β log d)
- best-of-n:    R_bon(d) = d (α − β d),    with KL_bon(n) = log n − (n − 1)/n (their §2.2; an upper
  bound on the KL of the best-of-n policy that is exact for continuous, tie-free scores).

Both forms are zero at d = 0: they model the *gain* over the initial policy. Gao et al. fit the
difference from the initial policy's reward, and so do we: callers pass ``gold(d) − gold(0)``
(in the demo: the gain over step 1 of the RL run, or over best-of-1 = plain SFT sampling). Both are
linear in (α, β) given d, so the least-squares fit has a closed form (2 × 2 normal equations).

What lives here: the forms, the fits, where the fitted gold peaks, and an unbiased best-of-n
estimator from m ≥ n samples per prompt. Pure functions of plain lists; no I/O, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def kl_bon(n: int) -> float:
    """KL of best-of-n sampling to the base policy (Gao et al. 2022, §2.2): log n − (n − 1)/n."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def _d_log_d(d: float) -> float:
    return 0.0 if d == 0 else d * math.log(d)  # lim_{d→0} d log d = 0


def rl_form(d: float, alpha: float, beta: float) -> float:
    """R_RL(d) = d (α − β log d); 0 at d = 0."""
    if d < 0:
        raise ValueError(f"d = sqrt(KL) must be >= 0, got {d}")
    return alpha * d - beta * _d_log_d(d)


def bon_form(d: float, alpha: float, beta: float) -> float:
    """R_bon(d) = d (α − β d)."""
    if d < 0:
        raise ValueError(f"d = sqrt(KL) must be >= 0, got {d}")
    return d * (alpha - beta * d)


def _fit_two(x1: Sequence[float], x2: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least squares of y ≈ a·x1 + b·x2 (no intercept) by the 2 × 2 normal equations."""
    s11 = sum(a * a for a in x1)
    s22 = sum(b * b for b in x2)
    s12 = sum(a * b for a, b in zip(x1, x2))
    t1 = sum(a * v for a, v in zip(x1, y))
    t2 = sum(b * v for b, v in zip(x2, y))
    det = s11 * s22 - s12 * s12
    if abs(det) <= 1e-12 * max(s11 * s22, 1e-300):
        raise ValueError("the fit is degenerate: need at least two distinct d > 0 (and d ≠ 1 for the RL form)")
    return (t1 * s22 - t2 * s12) / det, (t2 * s11 - t1 * s12) / det


def _check(d: Sequence[float], gain: Sequence[float]) -> None:
    if len(d) != len(gain):
        raise ValueError(f"{len(d)} values of d but {len(gain)} rewards")
    if any(x < 0 or not math.isfinite(x) for x in d):
        raise ValueError("every d = sqrt(KL) must be finite and >= 0")
    if any(not math.isfinite(g) for g in gain):
        raise ValueError("every reward must be finite")


def fit_rl_form(d: Sequence[float], gain: Sequence[float]) -> dict[str, float | None]:
    """Least-squares (α, β) of gain ≈ d (α − β log d), and where the fitted curve peaks.

    ``gain``: reward minus the initial policy's (Gao et al. fit the difference). Regressors d and
    −d log d. Peak: dR/dd = α − β log d − β = 0 ⇒ d* = exp(α/β − 1), a maximum when β > 0; with
    β <= 0 the fitted reward never turns down and ``d_peak`` / ``kl_peak`` / ``gain_peak`` are None.
    """
    _check(d, gain)
    alpha, beta = _fit_two(list(d), [-_d_log_d(x) for x in d], gain)
    d_peak = rl_peak(alpha, beta)
    return {"alpha": alpha, "beta": beta, "d_peak": d_peak, "kl_peak": None if d_peak is None else d_peak ** 2,
            "gain_peak": None if d_peak is None else rl_form(d_peak, alpha, beta)}


def fit_bon_form(d: Sequence[float], gain: Sequence[float]) -> dict[str, float | None]:
    """Least-squares (α, β) of gain ≈ d (α − β d); peak at d* = α / (2β) when β > 0 (else None)."""
    _check(d, gain)
    alpha, beta = _fit_two(list(d), [-x * x for x in d], gain)
    d_peak = bon_peak(alpha, beta)
    return {"alpha": alpha, "beta": beta, "d_peak": d_peak, "kl_peak": None if d_peak is None else d_peak ** 2,
            "gain_peak": None if d_peak is None else bon_form(d_peak, alpha, beta)}


def rl_peak(alpha: float, beta: float) -> float | None:
    """argmax_d d (α − β log d) = exp(α/β − 1) for β > 0; None otherwise (no maximum)."""
    if beta <= 0:
        return None
    exponent = alpha / beta - 1.0
    return math.exp(exponent) if exponent < 700 else math.inf


def bon_peak(alpha: float, beta: float) -> float | None:
    """argmax_{d >= 0} d (α − β d) = α / (2β) for β > 0 (0 if α <= 0); None for β <= 0."""
    if beta <= 0:
        return None
    return max(alpha, 0.0) / (2.0 * beta)


def best_of_n_expected(proxy: Sequence[float], gold: Sequence[float], n: int) -> float:
    """Expected gold of best-of-n for one prompt, estimated without bias from its m >= n samples.

    Best-of-n draws n of the m samples without replacement and keeps the one the proxy scores
    highest. Sort the samples by proxy ascending (1-indexed i): sample i is the kept one exactly
    when it is drawn and the other n − 1 come from the i − 1 below it, with probability
    C(i − 1, n − 1) / C(m, n). The estimate Σ_i C(i−1, n−1)/C(m, n) · gold_i averages over every
    n-subset of the m samples (the U-statistic of Nakano et al. 2021's best-of-n, as Gao et al. use).
    Proxy ties are broken uniformly at random: each tied sample's gold is replaced by its tie group's
    mean (the expectation under a random tie-break), so the result does not depend on input order.
    """
    m = len(proxy)
    if m != len(gold):
        raise ValueError(f"{m} proxy scores but {len(gold)} gold rewards")
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} needs 1 <= n <= m = {m} samples")
    order = sorted(range(m), key=lambda i: proxy[i])
    g = [float(gold[i]) for i in order]
    p = [float(proxy[i]) for i in order]
    start = 0
    while start < m:  # average gold within runs of equal proxy
        end = start
        while end + 1 < m and p[end + 1] == p[start]:
            end += 1
        mean = sum(g[start:end + 1]) / (end + 1 - start)
        g[start:end + 1] = [mean] * (end + 1 - start)
        start = end + 1
    total = math.comb(m, n)
    return sum(math.comb(i - 1, n - 1) * g[i - 1] for i in range(n, m + 1)) / total


def best_of_n_curve(proxy: Sequence[Sequence[float]], gold: Sequence[Sequence[float]],
                    ns: Sequence[int]) -> list[dict[str, float]]:
    """For each n: the mean over prompts of best-of-n's expected gold and proxy, with KL_bon(n) and d.

    ``proxy[j]``, ``gold[j]``: the m_j samples of prompt j (m_j >= max(ns)). The proxy column is
    the same estimator applied to the proxy itself (the reward model's score of the kept sample).
    """
    if len(proxy) != len(gold) or not proxy:
        raise ValueError("best_of_n_curve needs the same, non-zero number of prompts for proxy and gold")
    rows = []
    for n in ns:
        g = [best_of_n_expected(p, y, n) for p, y in zip(proxy, gold)]
        q = [best_of_n_expected(p, p, n) for p in proxy]
        kl = kl_bon(n)
        rows.append({"n": n, "kl": kl, "d": math.sqrt(kl), "gold": sum(g) / len(g), "proxy": sum(q) / len(q)})
    return rows
