"""What labels cost: reward-model accuracy against the number of labelled comparisons, random vs active.

Retraining the full reward model once per label budget would blow the demo's time budget, so this is
a cheap stand-in, and says so: the SFT model is frozen, each response is one feature vector (its
last-token hidden state, computed once), and the reward is a *linear head* r(x) = w · f(x) fitted as
a Bradley–Terry model (Bradley & Terry 1952; the reward-model loss of Ouyang et al. 2022, eq. 1):
P(chosen ≻ rejected) = σ(w · (f_c − f_r)), i.e. logistic regression without a bias on feature
differences, with an L2 penalty (separable sets would otherwise have no finite optimum), solved
deterministically by L-BFGS in float64.

Active selection is the labelling app's uncertainty sampling (``rlhfkit.feedback.app.active``): in
rounds, the head fitted on the labels so far scores the unlabelled pairs and the most uncertain ones
(``pair_uncertainty``: 1 − |2σ(r_a − r_b) − 1|) are labelled next. Random selection labels a seeded
random order. Both start from the same random seed batch.

What lives here: the BT head, its accuracy, the two selection strategies, the "labels to reach 95 %
of the final accuracy" read-out. What does not: computing the features (the demo step does it once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fit_bt_head(diffs: torch.Tensor, *, l2: float = 1e-2, max_iter: int = 200) -> torch.Tensor:
    """w minimising mean_i log(1 + exp(−w · diffs_i)) + (l2 / 2) ‖w‖² (chosen minus rejected features).

    ``diffs``: (N, D) = f(chosen) − f(rejected). Returns w: (D,), float64. Convex and strictly so for
    l2 > 0, so L-BFGS from w = 0 reaches the one optimum; deterministic on a given machine.
    """
    if diffs.dim() != 2 or diffs.shape[0] == 0:
        raise ValueError(f"fit_bt_head needs a non-empty (N, D) tensor of feature differences, got {tuple(diffs.shape)}")
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (a separable set has no finite optimum otherwise), got {l2}")
    x = diffs.to(torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + 0.5 * l2 * (w @ w)  # softplus(−z) = −log σ(z)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def pair_accuracy(w: torch.Tensor, feats_a: torch.Tensor, feats_b: torch.Tensor, a_better: Sequence[bool]) -> float:
    """Share of pairs the head ranks as the reference does (strictly: a tie counts as wrong)."""
    margin = (feats_a.to(torch.float64) - feats_b.to(torch.float64)) @ w  # (N,)
    right = [(m > 0) if better else (m < 0) for m, better in zip(margin.tolist(), a_better)]
    return sum(right) / len(right) if right else float("nan")


def budgets(pool: int, *, start: int = 8, points: int = 8) -> list[int]:
    """Label budgets from ``start`` doubling up to the whole pool (the pool always last), at most ``points``."""
    if pool < 1:
        raise ValueError("the pool of labelled pairs is empty")
    sizes, n = [], max(1, min(start, pool))
    while n < pool:
        sizes.append(n)
        n *= 2
    sizes.append(pool)
    return sizes[-points:] if len(sizes) > points else sizes


def learning_curve(train_chosen: torch.Tensor, train_rejected: torch.Tensor, eval_a: torch.Tensor,
                   eval_b: torch.Tensor, eval_a_better: Sequence[bool], sizes: Sequence[int], *,
                   strategy: str, seed: int = 0, l2: float = 1e-2) -> list[dict]:
    """Accuracy on the evaluation pairs of a BT head trained on the first ``sizes[k]`` labels chosen by
    ``strategy`` ("random": a seeded permutation of the pool; "active": the seed batch is the same
    random prefix of ``sizes[0]`` pairs, then each round adds the most uncertain unlabelled pairs
    under the head of the previous round). Rows: {"labels": n, "accuracy": acc}.
    """
    if strategy not in ("random", "active"):
        raise ValueError(f"strategy must be 'random' or 'active', got {strategy!r}")
    from rlhfkit.feedback.app.active import pair_uncertainty

    pool = train_chosen.shape[0]
    if train_rejected.shape != train_chosen.shape:
        raise ValueError("chosen and rejected features differ in shape")
    if list(sizes) != sorted(sizes) or not sizes or sizes[0] < 1 or sizes[-1] > pool:
        raise ValueError(f"sizes must increase within 1..{pool}, got {list(sizes)}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(pool, generator=g).tolist()
    diffs = train_chosen.to(torch.float64) - train_rejected.to(torch.float64)
    chosen: list[int] = order[: sizes[0]]
    rows = []
    for k, n in enumerate(sizes):
        if strategy == "random":
            chosen = order[:n]
        elif len(chosen) < n:  # active: top up with the most uncertain pairs under the last head
            labelled = set(chosen)
            rest = [i for i in order if i not in labelled]  # random order breaks ties in uncertainty
            margins = (diffs[rest] @ w).tolist()
            unc = [pair_uncertainty(m, 0.0) for m in margins]
            ranked = sorted(range(len(rest)), key=lambda j: -unc[j])  # stable: ties keep the random order
            chosen = chosen + [rest[j] for j in ranked[: n - len(chosen)]]
        w = fit_bt_head(diffs[chosen], l2=l2)
        rows.append({"labels": n, "accuracy": pair_accuracy(w, eval_a, eval_b, eval_a_better)})
    return rows


def mean_curve(curves: Sequence[Sequence[dict]]) -> list[dict]:
    """Point-wise mean accuracy of curves measured at the same label budgets (repeats over seeds)."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    sizes = [r["labels"] for r in curves[0]]
    if any([r["labels"] for r in c] != sizes for c in curves):
        raise ValueError("the curves were measured at different label budgets")
    return [{"labels": n, "accuracy": sum(c[k]["accuracy"] for c in curves) / len(curves)}
            for k, n in enumerate(sizes)]


def labels_to_reach(curve: Sequence[dict], *, fraction: float = 0.95, final: float | None = None) -> int | None:
    """The fewest labels whose accuracy reaches ``fraction`` × ``final`` (default: the curve's last
    accuracy, i.e. the whole pool); None if no point does."""
    if not curve:
        return None
    target = fraction * (curve[-1]["accuracy"] if final is None else final)
    for row in curve:
        if row["accuracy"] >= target:
            return row["labels"]
    return None
