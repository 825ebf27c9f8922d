"""The gap between the sampler and the trainer, and its correction: pure functions of (B, R) tensors.

When responses come from another engine (a rollout server, vLLM, SGLang), the sampler's per-token
log-probs differ from the trainer's recomputed old-policy log-probs: other kernels, another
precision, weights one sync behind. The loops log the gap (``rollout/logprob_diff_mean|max``) and
may correct the policy loss with truncated importance sampling (TIS; Yao et al. 2025, "Your
efficient RL framework secretly brings you off-policy RL training"): the samples were drawn from
π_sampler, so each token's loss is weighted by min(π_old / π_sampler, C).

Not here: where the log-probs come from (:mod:`rlhfkit.rollout`, :mod:`.rollout`), the losses the
weights multiply (:mod:`rlhfkit.losses`, through :func:`tis_advantages`).
"""

from __future__ import annotations

import torch


def logprob_gap(sampler_logprobs: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """|log π_old − log π_sampler| over response tokens: its mean (over all tokens) and max, as
    ``rollout/logprob_diff_mean`` and ``rollout/logprob_diff_max``. Shapes: (B, R) each."""
    diff = (logprobs.float() - sampler_logprobs.float()).abs() * mask
    count = mask.sum()
    if float(count) == 0:
        return {"rollout/logprob_diff_mean": 0.0, "rollout/logprob_diff_max": 0.0}
    return {"rollout/logprob_diff_mean": float(diff.sum() / count), "rollout/logprob_diff_max": float(diff.max())}


def tis_weights(logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor, *,
                cap: float) -> torch.Tensor:
    """Truncated importance weights w_t = min(π_old(y_t) / π_sampler(y_t), C) (Yao et al. 2025,
    token-level TIS), 0 on padding, no gradient. Shapes: (B, R) each → (B, R)."""
    if cap <= 0:
        raise ValueError(f"tis_weights: cap must be > 0, got {cap}")
    ratio = torch.exp(logprobs.detach().float() - sampler_logprobs.detach().float())
    return ratio.clamp(max=cap) * mask


def tis_advantages(advantages: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The advantages that make the clipped surrogate TIS-weighted: for w > 0,
    w·max(−A·ρ, −A·clip(ρ)) = max(−(wA)·ρ, −(wA)·clip(ρ)), so weighting each token's policy loss
    by w_t is scaling its advantage by w_t (the value and KL terms stay unweighted, as in Yao et al.).
    Shapes: advantages (B,) per sequence or (B, R) per token, weights (B, R) or None → (B, R)
    (unchanged when ``weights`` is None)."""
    if weights is None:
        return advantages
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    return advantages * weights
