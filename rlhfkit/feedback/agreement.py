"""Inter-annotator agreement: Krippendorff's α (nominal, ordinal) and Cohen's κ.

Pure functions of label lists; no I/O. Both follow the textbook definitions:
- Krippendorff, K. (2011). *Computing Krippendorff's Alpha-Reliability*. Annenberg School for
  Communication, University of Pennsylvania. (coincidence matrix, §A and §C)
- Cohen, J. (1960). A coefficient of agreement for nominal scales. *Educ. Psychol. Meas.* 20(1).

An undefined coefficient (no variation at all, so no disagreement could be expected) is ``nan``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from itertools import permutations

LEVELS = ("nominal", "ordinal")


def coincidences(units: Iterable[Sequence[Hashable | None]]) -> dict[tuple[Hashable, Hashable], float]:
    """The coincidence matrix o_ck = Σ_u (number of c-k pairs in unit u) / (m_u - 1).

    ``units``: for each unit, the values given by the coders who rated it (``None`` = missing).
    Units with fewer than two values are not pairable and are left out.
    """
    o: dict[tuple[Hashable, Hashable], float] = Counter()
    for unit in units:
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue
        for c, k in permutations(values, 2):  # ordered pairs of distinct coders
            o[(c, k)] += 1.0 / (m - 1)
    return dict(o)


def _delta2(level: str, marginals: dict[Hashable, float]):
    """The squared difference function δ²(c, k) for the level of measurement."""
    if level == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if level == "ordinal":
        order = sorted(marginals)
        rank = {v: i for i, v in enumerate(order)}
        cum = [0.0]
        for v in order:
            cum.append(cum[-1] + marginals[v])

        def ordinal(c, k):
            lo, hi = sorted((rank[c], rank[k]))
            # Σ_{g=c..k} n_g - (n_c + n_k) / 2, squared
            between = cum[hi + 1] - cum[lo]
            return (between - (marginals[c] + marginals[k]) / 2.0) ** 2

        return ordinal
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def krippendorff_alpha(units: Iterable[Sequence[Hashable | None]], *, level: str = "nominal") -> float:
    """Krippendorff's α = 1 - (n - 1) · Σ o_ck δ²_ck / Σ n_c n_k δ²_ck.

    ``units``: one sequence of values per unit (any number of coders, ``None`` = missing).
    ``level``: "nominal" (categories) or "ordinal" (values are sortable and their order matters).
    Returns ``nan`` when fewer than two pairable values exist or all values are the same.
    """
    o = coincidences(units)
    n_c: dict[Hashable, float] = Counter()
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    if n < 2:
        return math.nan
    d2 = _delta2(level, dict(n_c))
    observed = sum(w * d2(c, k) for (c, k), w in o.items())
    expected = sum(n_c[c] * n_c[k] * d2(c, k) for c in n_c for k in n_c)
    if expected == 0:
        return math.nan
    return 1.0 - (n - 1) * observed / expected


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's κ = (p_o - p_e) / (1 - p_e) for two coders who labeled the same units, in order.

    p_o: fraction of units where they agree; p_e = Σ_c p_a(c) · p_b(c) (chance agreement from
    each coder's own marginals). ``nan`` when p_e = 1 (both used one and the same category).
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs paired labels, got {len(a)} and {len(b)}")
    if not a:
        return math.nan
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if p_e == 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)
