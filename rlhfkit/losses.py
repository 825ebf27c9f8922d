"""Every loss of rlhfkit, as pure functions of tensors.

Each loss takes tensors positionally and hyper-parameters keyword-only, and returns a
:class:`LossOutput`: ``losses`` per example (callers take ``.losses.mean()``) and ``stats``, the
detached scalars worth logging. Log-probabilities are SUMS over completion tokens unless the
argument name says ``avg`` (mean over completion tokens).

Sections: reward model · direct preference (DPO family, ORPO, SimPO, KTO) · PPO / GRPO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhfkit.ops import aggregate_token_losses, kl_k3, log1mexp, masked_mean

__all__ = [
    "LossOutput",
    "bradley_terry_loss",
    "soft_label_loss",
    "ranking_loss",
    "reward_centering_penalty",
    "dpo_loss",
    "robust_dpo_loss",
    "hinge_dpo_loss",
    "ipo_loss",
    "DPO_LOSSES",
    "AVG_LOGPS_LOSSES",
    "orpo_loss",
    "simpo_loss",
    "kto_loss",
    "kto_reference_point",
    "ppo_policy_loss",
    "ppo_value_loss",
    "grpo_policy_loss",
]


@dataclass(frozen=True)
class LossOutput:
    """What every loss returns."""

    losses: Tensor
    """(B,) per-example loss; the training loop takes ``.losses.mean()``"""
    stats: dict[str, Tensor]
    """detached 0-dim tensors worth logging, e.g. ``{"rewards/accuracies": ...}``"""


def _soft_logistic(logits: Tensor, label_prob: Tensor | float) -> Tensor:
    """Binary cross-entropy with a soft label: −[p·log σ(z) + (1−p)·log σ(−z)]. Shapes: (B,)."""
    return -label_prob * F.logsigmoid(logits) - (1.0 - label_prob) * F.logsigmoid(-logits)


def _check_prob(name: str, p: Tensor | float, *, high: float = 1.0, closed: bool = True) -> None:
    p = torch.as_tensor(p)
    ok = (p >= 0).all() and ((p <= high).all() if closed else (p < high).all())
    if not bool(ok):
        bound = f"[0, {high}]" if closed else f"[0, {high})"
        raise ValueError(f"{name} must lie in {bound}, got {p.tolist()}")


def _reward_stats(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "accuracy": (c > r).float().mean(),
        "margin": (c - r).mean(),
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
    }


def preference_stats(chosen_logratios: Tensor, rejected_logratios: Tensor, *, beta: float) -> dict[str, Tensor]:
    """DPO-style implicit rewards β·log(π/π_ref) of chosen and rejected, as TRL logs them."""
    c, r = beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    return {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/accuracies": (c > r).float().mean(),
        "rewards/margins": (c - r).mean(),
    }


# ============================================================================================
# reward model
# ============================================================================================


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | float | None = None
) -> LossOutput:
    """Bradley–Terry pairwise reward-model loss (Ouyang et al. 2022, eq. 1; Stiennon et al. 2020,
    eq. 1): −log σ(r_c − r_r − m), with an optional margin m (Llama 2, Touvron et al. 2023, eq. 2).

    Shapes: chosen_rewards, rejected_rewards (B,); margin (B,) or a float → losses (B,).
    stats: accuracy (r_c > r_r), margin (mean r_c − r_r), rewards/chosen, rewards/rejected.
    """
    logits = chosen_rewards - rejected_rewards
    if margin is not None:
        logits = logits - margin
    return LossOutput(losses=-F.logsigmoid(logits), stats=_reward_stats(chosen_rewards, rejected_rewards))


def soft_label_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, *, label_prob: Tensor | float) -> LossOutput:
    """Bradley–Terry with a soft label p = P(chosen ≻ rejected), e.g. an AI judge's probability or
    an annotator vote share (Lee et al. 2023, RLAIF, distilled soft-label RM; Bai et al. 2022b):
    −[p·log σ(d) + (1−p)·log σ(−d)], d = r_c − r_r. With p = 1 this is :func:`bradley_terry_loss`.

    Shapes: rewards (B,); label_prob (B,) or a float in [0, 1] → losses (B,). stats as BT.
    """
    _check_prob("label_prob", label_prob)
    logits = chosen_rewards - rejected_rewards
    return LossOutput(
        losses=_soft_logistic(logits, label_prob), stats=_reward_stats(chosen_rewards, rejected_rewards)
    )


def ranking_loss(
    rewards: Tensor, pairs_index: Tensor, pair_probs: Tensor, group_ids: Tensor, *, num_groups: int
) -> LossOutput:
    """InstructGPT K-way ranking loss (Ouyang et al. 2022, §3.5, eq. 1): every pair of one prompt's
    K responses in one batch element, each prompt's loss the MEAN over its pairs (the 1/C(K,2)
    factor), so a prompt with many responses does not dominate the batch.

    Pair loss: −[p·log σ(r_i − r_j) + (1−p)·log σ(r_j − r_i)] (p = 1 for strict pairs, 0.5 for
    soft ties; see :func:`rlhfkit.data.rankings.expand_ranking`).

    Shapes (build them with :func:`rlhfkit.data.rankings.flatten_ranking_pairs`):
      rewards      (N,)   float — scores of every response of every prompt, flattened
      pairs_index  (P, 2) long  — (i, j) indices into ``rewards``; i is the preferred one w.p. p
      pair_probs   (P,)   float — p = P(i ≻ j)
      group_ids    (P,)   long  — prompt of each pair, in [0, num_groups)
      → losses (num_groups,). A prompt with no pair (all tied, ties skipped) has loss 0; an
      empty batch of pairs (P = 0, any empty tensors) gives zeros.
    stats: accuracy (over pairs with p ≠ 0.5: the higher reward goes to the preferred one),
    num_pairs.
    """
    if pairs_index.numel() == 0:  # no pair at all (e.g. every ranking fully tied, ties skipped)
        pairs_index = pairs_index.reshape(0, 2)
    pairs_index, group_ids = pairs_index.long(), group_ids.long()
    if pairs_index.dim() != 2 or pairs_index.shape[1] != 2:
        raise ValueError(f"pairs_index must have shape (P, 2), got {tuple(pairs_index.shape)}")
    num_pairs = pairs_index.shape[0]
    if pair_probs.shape != (num_pairs,) or group_ids.shape != (num_pairs,):
        raise ValueError(
            f"pair_probs {tuple(pair_probs.shape)} and group_ids {tuple(group_ids.shape)} must both have "
            f"shape ({num_pairs},) to match pairs_index"
        )
    diff = rewards[pairs_index[:, 0]] - rewards[pairs_index[:, 1]]  # (P,)
    pair_losses = _soft_logistic(diff, pair_probs.to(diff.dtype))  # (P,)
    sums = torch.zeros(num_groups, dtype=diff.dtype, device=diff.device).index_add(0, group_ids, pair_losses)
    counts = torch.zeros(num_groups, dtype=diff.dtype, device=diff.device).index_add(
        0, group_ids, torch.ones_like(pair_losses)
    )
    decisive = pair_probs != 0.5
    correct = ((diff.detach() > 0) == (pair_probs > 0.5)).float()
    stats = {
        "accuracy": masked_mean(correct, decisive),
        "num_pairs": torch.tensor(float(num_pairs), device=diff.device),
    }
    return LossOutput(losses=sums / counts.clamp(min=1), stats=stats)


def reward_centering_penalty(chosen_rewards: Tensor, rejected_rewards: Tensor, *, coef: float) -> LossOutput:
    """Auxiliary loss that keeps reward-model outputs centred at zero (Eisenstein et al. 2023,
    "Helping or Herding?"): coef·(r_c + r_r)² per example, whose batch mean is
    coef·mean((r_c + r_r)²) (TRL's ``center_rewards_coefficient``). Add it to a pairwise loss.

    Shapes: (B,) → losses (B,). stats: reward_mean (mean of all 2B rewards).
    """
    total = chosen_rewards + rejected_rewards
    stats = {"reward_mean": (total.detach() / 2).mean()}
    return LossOutput(losses=coef * total**2, stats=stats)


# ============================================================================================
# direct preference optimisation (log-probs are sums over completion tokens unless "avg")
# ============================================================================================


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    label_prob: Tensor | float | None = None,
) -> LossOutput:
    """Sigmoid DPO (Rafailov et al. 2023, eq. 7): −log σ(β·h), with
    h = [log π(y_c) − log π_ref(y_c)] − [log π(y_r) − log π_ref(y_r)].

    Label noise and soft labels use the soft-label cross-entropy
    p·(−log σ(βh)) + (1−p)·(−log σ(−βh)):
      - ``label_smoothing`` ε (conservative DPO, Mitchell 2023): p = 1 − ε;
      - ``label_prob`` p (B,) or float: the probability the chosen one is preferred;
      - both: the label p is flipped with probability ε, p_eff = p(1−ε) + (1−p)ε.

    Shapes: the four log-probs (B,) → losses (B,). stats: rewards/chosen, rewards/rejected
    (β·log-ratio means), rewards/accuracies, rewards/margins.
    """
    _check_prob("label_smoothing", label_smoothing, high=0.5)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    if label_prob is None:
        p: Tensor | float = 1.0 - label_smoothing
    else:
        _check_prob("label_prob", label_prob)
        p = label_prob * (1.0 - label_smoothing) + (1.0 - label_prob) * label_smoothing
    return LossOutput(
        losses=_soft_logistic(logits, p),
        stats=preference_stats(chosen_logratios, rejected_logratios, beta=beta),
    )


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO", the de-biased loss under
    preference labels flipped with rate ε): [(1−ε)·ℓ(βh) − ε·ℓ(−βh)] / (1 − 2ε), ℓ(z) = −log σ(z).
    ``label_smoothing`` is ε ∈ [0, 0.5) (TRL's name); ε = 0 gives :func:`dpo_loss`.

    Shapes: the four log-probs (B,) → losses (B,). stats as :func:`dpo_loss`.
    """
    _check_prob("label_smoothing", label_smoothing, high=0.5, closed=False)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    eps = label_smoothing
    losses = ((1.0 - eps) * -F.logsigmoid(logits) - eps * -F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)
    return LossOutput(losses=losses, stats=preference_stats(chosen_logratios, rejected_logratios, beta=beta))


def hinge_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """Hinge loss on the DPO log-ratio margin (SLiC-HF, Zhao et al. 2023, calibration loss with
    δ = 1/β; RSO, Liu et al. 2024, hinge-norm): relu(1 − β·h).

    Shapes: the four log-probs (B,) → losses (B,). stats as :func:`dpo_loss`.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = torch.relu(1.0 - beta * (chosen_logratios - rejected_logratios))
    return LossOutput(losses=losses, stats=preference_stats(chosen_logratios, rejected_logratios, beta=beta))


def ipo_loss(
    policy_chosen_avg_logps: Tensor,
    policy_rejected_avg_logps: Tensor,
    ref_chosen_avg_logps: Tensor,
    ref_rejected_avg_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17, β = τ): (h − 1/(2β))², on LENGTH-AVERAGED log-ratios
    h = [avg log π(y_c) − avg log π_ref(y_c)] − [avg log π(y_r) − avg log π_ref(y_r)],
    each response's policy and reference log-probs averaged over its own completion tokens (as
    TRL does; TRL notes the IPO authors confirmed their reported results use this form).

    Shapes: the four averaged log-probs (B,) → losses (B,). stats as :func:`dpo_loss`, on the
    averaged log-ratios.
    """
    chosen_logratios = policy_chosen_avg_logps - ref_chosen_avg_logps
    rejected_logratios = policy_rejected_avg_logps - ref_rejected_avg_logps
    losses = (chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(losses=losses, stats=preference_stats(chosen_logratios, rejected_logratios, beta=beta))


DPO_LOSSES: dict[str, Callable[..., LossOutput]] = {
    "sigmoid": dpo_loss,
    "robust": robust_dpo_loss,
    "hinge": hinge_dpo_loss,
    "ipo": ipo_loss,
}
"""the DPO family by name; each takes (policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, ...)"""

AVG_LOGPS_LOSSES = frozenset({"ipo"})
"""names in DPO_LOSSES whose log-prob arguments are averaged over completion tokens, not summed"""


def orpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, chosen_nll: Tensor, *, lam: float) -> LossOutput:
    """ORPO (Hong et al. 2024, eq. 6–7): L_SFT + λ·L_OR, no reference model.

    odds(y) = P(y)/(1 − P(y)) with log P(y) the length-averaged log-prob, so
    log odds(y) = avg_logp − log(1 − exp(avg_logp)) (stable :func:`rlhfkit.ops.log1mexp`);
    L_OR = −log σ(log odds(y_c) − log odds(y_r)). Average log-probs are clamped to ≤ −1e-6 so a
    response of probability 1 keeps finite odds.

    Shapes: chosen_avg_logps, rejected_avg_logps, chosen_nll (B,) (chosen_nll = the SFT loss of
    each chosen response) → losses (B,). ``lam`` is TRL's ``beta``.
    stats: nll, or_loss, log_odds_ratio (mean log σ(log-odds ratio), TRL's name),
    log_odds_chosen (mean log-odds ratio).
    """
    chosen = chosen_avg_logps.clamp(max=-1e-6)
    rejected = rejected_avg_logps.clamp(max=-1e-6)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))  # (B,)
    log_sigmoid_odds = F.logsigmoid(log_odds)
    or_loss = -log_sigmoid_odds
    stats = {
        "nll": chosen_nll.detach().mean(),
        "or_loss": or_loss.detach().mean(),
        "log_odds_ratio": log_sigmoid_odds.detach().mean(),
        "log_odds_chosen": log_odds.detach().mean(),
    }
    return LossOutput(losses=chosen_nll + lam * or_loss, stats=stats)


def simpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, *, beta: float, gamma: float) -> LossOutput:
    """SimPO (Meng et al. 2024, eq. 6): −log σ(β·(avg_c − avg_r) − γ), no reference model.

    γ is the target reward margin, subtracted from the logit directly (TRL's CPO trainer writes it
    as β·(avg_c − avg_r − γ/β), the same number). Shapes: (B,) → losses (B,).
    stats: rewards/* with the implicit reward β·avg_logp.
    """
    logits = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    return LossOutput(
        losses=-F.logsigmoid(logits),
        stats=preference_stats(chosen_avg_logps, rejected_avg_logps, beta=beta),
    )


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO reference point z0 (Ethayarajh et al. 2024, the KL term of the KTO loss): the mean
    log-ratio log π(y'|x) − log π_ref(y'|x) over MISMATCHED prompt–completion pairs (a completion
    of another prompt of the batch), an estimate of KL(π‖π_ref), clamped at 0 and detached.

    Shapes: (M,) → 0-dim. Under data parallelism, average across processes before clamping (TRL
    gathers).
    """
    return (policy_kl_logps - ref_kl_logps).detach().mean().clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    *,
    kl_reference: Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, the KTO loss, eq. 8; TRL's comment calls it eq. 7, the arXiv
    versions number it differently): with r = log π(y|x) − log π_ref(y|x) and reference
    point z0 = ``kl_reference`` (detached, clamped ≥ 0; see :func:`kto_reference_point`):
    desirable λ_D·(1 − σ(β(r − z0))), undesirable λ_U·(1 − σ(β(z0 − r))).

    Shapes: policy_logps, ref_logps (B,); labels (B,) bool (True = desirable) → losses (B,) in
    batch order. stats: kl (z0), rewards/chosen and rewards/rejected (mean β·r over desirable /
    undesirable examples, 0 if none), rewards/margins.
    """
    z0 = torch.as_tensor(kl_reference, dtype=policy_logps.dtype, device=policy_logps.device).detach().clamp(min=0)
    logratios = policy_logps - ref_logps
    labels = labels.bool()
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - z0)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratios)))
    rewards = beta * logratios.detach()
    chosen, rejected = masked_mean(rewards, labels), masked_mean(rewards, ~labels)
    stats = {"kl": z0, "rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected}
    return LossOutput(losses=torch.where(labels, desirable, undesirable), stats=stats)


# ============================================================================================
# PPO / GRPO (per-token inputs (B, T); mask 1 on completion tokens)
# ============================================================================================


def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, cliprange: float,
    loss_aggregation: str = "seq_mean_token_mean", max_length: int | None = None,
) -> LossOutput:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss:
    max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(logprobs − old_logprobs), per token, aggregated over
    tokens and sequences by ``loss_aggregation`` (:func:`rlhfkit.ops.aggregate_token_losses`:
    the mean of ``losses`` is the loss; ``max_length`` is the constant of ``seq_sum_norm``).

    Shapes: logprobs, old_logprobs, advantages, mask (B, T) → losses (B,).
    stats (over all unmasked tokens): policy/clipfrac (fraction where the clipped term is the
    max), policy/approxkl ½·mean((logp − old)²), policy/ratio_mean. At the first minibatch
    (logprobs == old_logprobs): ratio_mean 1, approxkl 0, clipfrac 0.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    stats = {
        "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
        "policy/approxkl": (0.5 * masked_mean(log_ratio.detach() ** 2, mask)),
        "policy/ratio_mean": masked_mean(ratio.detach(), mask),
    }
    losses = aggregate_token_losses(per_token, mask, mode=loss_aggregation, max_length=max_length)
    return LossOutput(losses=losses, stats=stats)


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, cliprange_value: float,
    loss_aggregation: str = "seq_mean_token_mean", max_length: int | None = None,
) -> LossOutput:
    """Clipped value loss (Huang et al. 2024, "N implementation details of RLHF with PPO";
    Ziegler et al. 2019): ½·max((v − R)², (clip(v, v_old − c, v_old + c) − R)²) per token,
    aggregated like the policy loss (``loss_aggregation``, see :func:`ppo_policy_loss`).

    Shapes: values, old_values, returns, mask (B, T) → losses (B,).
    stats: val/clipfrac (fraction where the clipped error is the larger), val/vpred (mean value),
    val/error (mean squared error of the unclipped values).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    per_token = 0.5 * torch.maximum(err_unclipped, err_clipped)
    stats = {
        "val/clipfrac": masked_mean((err_clipped > err_unclipped).float(), mask).detach(),
        "val/vpred": masked_mean(values.detach(), mask),
        "val/error": masked_mean(err_unclipped.detach(), mask),
    }
    losses = aggregate_token_losses(per_token, mask, mode=loss_aggregation, max_length=max_length)
    return LossOutput(losses=losses, stats=stats)


def grpo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    cliprange: float,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    loss_aggregation: str = "seq_mean_token_mean",
    max_length: int | None = None,
) -> LossOutput:
    """GRPO (Shao et al. 2024, eq. 3–4): per-token clipped surrogate with the sequence's
    advantage on every token, plus kl_coef·k3(π‖π_ref) per token (eq. 4's unbiased estimator,
    :func:`rlhfkit.ops.kl_k3`), aggregated by ``loss_aggregation``: ``seq_mean_token_mean`` is
    the paper's 1/|o_i| per-sequence mean (eq. 3), ``token_mean`` DAPO's, ``seq_sum_norm`` Dr.
    GRPO's constant normaliser ``max_length`` (:func:`rlhfkit.ops.aggregate_token_losses`).

    Shapes: logprobs, old_logprobs, mask (B, T); advantages (B,) (e.g.
    :func:`rlhfkit.ops.group_advantages`) or (B, T) (per-token weighted); ref_logprobs (B, T) or None → losses (B,).
    stats: policy/clipfrac, policy/approxkl, policy/ratio_mean, and kl (mean k3) when
    ref_logprobs is given.
    """
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages[:, None].expand_as(logprobs)
    elif advantages.shape != logprobs.shape:  # (B, T): per-token weighted, e.g. TIS (offpolicy.tis_advantages)
        raise ValueError(
            f"grpo_policy_loss: advantages must be per sequence (B,) = ({logprobs.shape[0]},) or per token "
            f"{tuple(logprobs.shape)}, got {tuple(advantages.shape)}"
        )
    if kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError("grpo_policy_loss: kl_coef != 0 needs ref_logprobs")
    aggregation = dict(loss_aggregation=loss_aggregation, max_length=max_length)
    policy = ppo_policy_loss(logprobs, old_logprobs, advantages, mask,
                             cliprange=cliprange, **aggregation)
    losses, stats = policy.losses, dict(policy.stats)
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs)  # (B, T)
        stats["kl"] = masked_mean(kl.detach(), mask)
        if kl_coef != 0.0:
            losses = losses + kl_coef * aggregate_token_losses(kl, mask, mode=loss_aggregation, max_length=max_length)
    return LossOutput(losses=losses, stats=stats)
