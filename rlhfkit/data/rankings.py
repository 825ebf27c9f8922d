"""K-way rankings → pairwise comparisons (InstructGPT, Ouyang et al. 2022, §3.5 and eq. 1).

A ranking record is ``{"prompt", "responses": [...], "ranking": [...]}``; ``ranking`` lists
response indices best first, and an element may be a list of tied indices:
``[2, [0, 1], 3]`` means 2 is best, 0 and 1 are tied, 3 is worst.

``expand_ranking`` turns one ranking into its C(K, 2) pairs; ``flatten_ranking_pairs`` lays the
pairs of a batch of prompts out as the flat tensors :func:`rlhfkit.losses.ranking_loss` takes.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["TIES", "expand_ranking", "flatten_ranking_pairs"]

TIES = ("skip", "soft")
"""how tied responses become pairs: ``"skip"`` drops them, ``"soft"`` keeps them with p = 0.5"""


def _as_index(value: object, position: str, num_responses: int) -> int:
    # bool is an Integral in Python; a ranking of True/False is a data error, not indices 1/0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"ranking {position} must be an integer response index, got {value!r}")
    index = int(value)
    if not 0 <= index < num_responses:
        raise ValueError(f"ranking {position} = {index} is out of range for {num_responses} responses")
    return index


def expand_ranking(
    ranking: Sequence[int | Sequence[int]], num_responses: int, *, ties: str = "skip"
) -> list[tuple[int, int, float]]:
    """All pairwise comparisons implied by a best-first ranking.

    Returns ``(i, j, p)`` triples meaning P(response i preferred to response j) = p. Strict pairs
    have p = 1.0 with i the better one; tied pairs are dropped (``ties="skip"``) or kept with
    p = 0.5 (``ties="soft"``), i being the one listed first. Pairs come in ranking order: for
    positions s < t of the flattened ranking, (ranking[s], ranking[t]). A strict ranking of K
    responses gives C(K, 2) pairs.

    Every index 0..num_responses−1 must appear exactly once; a duplicated, missing,
    out-of-range or non-integer index, or an empty tie group, raises ValueError.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
        raise ValueError(f"ranking must be a list, got {type(ranking).__name__}")
    flat: list[tuple[int, int]] = []  # (response index, level)
    seen: set[int] = set()
    for level, element in enumerate(ranking):
        is_group = isinstance(element, Sequence) and not isinstance(element, (str, bytes))
        members = element if is_group else [element]
        if len(members) == 0:
            raise ValueError(f"ranking[{level}] is an empty tie group")
        for k, value in enumerate(members):
            position = f"ranking[{level}][{k}]" if is_group else f"ranking[{level}]"
            index = _as_index(value, position, num_responses)
            if index in seen:
                raise ValueError(f"{position}: response {index} appears more than once in the ranking")
            seen.add(index)
            flat.append((index, level))
    missing = sorted(set(range(num_responses)) - seen)
    if missing:
        raise ValueError(f"ranking does not rank response(s) {missing} of {num_responses}")

    pairs: list[tuple[int, int, float]] = []
    for s, (i, level_i) in enumerate(flat):
        for j, level_j in flat[s + 1 :]:
            if level_i != level_j:
                pairs.append((i, j, 1.0))
            elif ties == "soft":
                pairs.append((i, j, 0.5))
    return pairs


def flatten_ranking_pairs(
    pairs_per_prompt: Sequence[Sequence[tuple[int, int, float]]], num_responses: Sequence[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Lay out the pairs of several prompts for :func:`rlhfkit.losses.ranking_loss`.

    The responses of prompt g are assumed flattened in order into one reward vector, prompt 0's
    first; pair indices are shifted by the number of responses of the prompts before it.
    Args: ``pairs_per_prompt[g]`` from :func:`expand_ranking`; ``num_responses[g]`` = K_g.
    Returns ``pairs_index`` (P, 2) long into the flat rewards (N = Σ K_g), ``pair_probs`` (P,)
    float32, ``group_ids`` (P,) long.
    """
    if len(pairs_per_prompt) != len(num_responses):
        raise ValueError(
            f"got pairs for {len(pairs_per_prompt)} prompts but response counts for {len(num_responses)}"
        )
    index, probs, groups = [], [], []
    offset = 0
    for g, (pairs, k) in enumerate(zip(pairs_per_prompt, num_responses)):
        for i, j, p in pairs:
            if not (0 <= i < k and 0 <= j < k):
                raise ValueError(f"prompt {g}: pair ({i}, {j}) is out of range for {k} responses")
            index.append((offset + i, offset + j))
            probs.append(float(p))
            groups.append(g)
        offset += k
    return (
        torch.tensor(index, dtype=torch.long).reshape(-1, 2),
        torch.tensor(probs, dtype=torch.float32),
        torch.tensor(groups, dtype=torch.long),
    )
