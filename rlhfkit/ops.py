"""Tensor math shared by every training loop: masked statistics, log-probs, EOS handling,
GAE, KL estimators, KL controllers, running moments and group advantages.

Everything here is a pure function of tensors (hyper-parameters keyword-only) except three tiny
stateful helpers a loop checkpoints: ``FixedKLController``, ``AdaptiveKLController`` and
``RunningMoments``. Shapes: B = batch, T = time (completion tokens), V = vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "LOSS_AGGREGATIONS",
    "aggregate_token_losses",
    "masked_whiten",
    "logprobs_from_logits",
    "entropy_from_logits",
    "EosTruncation",
    "truncate_after_eos",
    "last_token_index",
    "gae",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "KL_ESTIMATORS",
    "kl_estimate",
    "log1mexp",
    "FixedKLController",
    "AdaptiveKLController",
    "RunningMoments",
    "group_advantages",
    "rloo_advantages",
]


# --------------------------------------------------------------------------------------------
# masked statistics (Huang et al. 2024, "The N+ implementation details of RLHF with PPO")
# --------------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is 1.

    Shapes: x (...), mask same shape as x (bool or 0/1). Returns a scalar (dim=None) or x reduced
    over ``dim``. Masked-out entries are *selected away* (not multiplied by 0), so a NaN or -inf
    sitting in padding cannot leak into the sum.
    """
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1.

    Shapes: x (...), mask same shape. Returns a scalar (dim=None) or x reduced over ``dim``.
    A row with no kept entry has mean 0 (its count is clamped to 1), never NaN.
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


LossAggregation = Literal["token_mean", "seq_mean_token_mean", "seq_sum_norm"]
LOSS_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_sum_norm")


def aggregate_token_losses(per_token: Tensor, mask: Tensor, *, mode: str, max_length: int | None = None) -> Tensor:
    """Per-sequence terms whose mean over the batch is the policy loss under ``mode``.

    Shapes: per_token, mask (B, T) → (B,). With S_i = Σ_t mask·loss of sequence i, |o_i| its
    token count and N = Σ_i |o_i|:
    - ``seq_mean_token_mean`` (GRPO, Shao et al. 2024 eq. 3): S_i / |o_i| — each response weighs
      the same, so a token of a short response weighs more than one of a long response;
    - ``token_mean`` (DAPO, Yu et al. 2025; TRL's and the "N implementation details" PPO):
      S_i · B / N — the batch mean is Σ_i S_i / N, every token weighs the same;
    - ``seq_sum_norm`` (Dr. GRPO, Liu et al. 2025 eq. 5): S_i / max_length, a constant — no length
      normalisation at all; with one action per response it is REINFORCE on log π(y|x) =
      Σ_t log π(y_t|…), scaled by a constant (RLOO, Ahmadian et al. 2024).
    """
    sums = masked_sum(per_token, mask, dim=1)  # (B,)
    if mode == "seq_mean_token_mean":
        return sums / mask.to(per_token.dtype).sum(1).clamp(min=1)
    if mode == "token_mean":
        return sums * per_token.shape[0] / mask.to(per_token.dtype).sum().clamp(min=1)
    if mode == "seq_sum_norm":
        if not max_length or max_length <= 0:
            raise ValueError("aggregate_token_losses: seq_sum_norm needs max_length > 0 (the longest response)")
        return sums / max_length
    raise ValueError(f"loss aggregation must be one of {', '.join(LOSS_AGGREGATIONS)}, got {mode!r}")


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all entries where ``mask`` is 1 (one scalar for the whole tensor).

    Shapes: x (...), mask same shape → scalar. ``unbiased`` applies Bessel's correction n/(n−1),
    as lm-human-preferences and TRL do; it needs at least two kept entries (ValueError otherwise).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 unmasked entries, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its unmasked entries.

    (x − mean) / sqrt(var + 1e-8); with ``shift_mean=False`` the mean is added back, so only the
    scale changes (used for rewards, Huang et al. 2024). Shapes: x (...), mask same shape → same
    shape; entries where mask is 0 are set to 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


# --------------------------------------------------------------------------------------------
# log-probabilities and entropy
# --------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label) under softmax(logits), as ``logits.gather(label) − logsumexp(logits)``.

    Shapes: logits (B, T, V), labels (B, T) long → (B, T) in float32 (float64 stays float64).
    The full log-softmax is never materialised: the logsumexp is taken one row of the batch at a
    time, upcast to float32, so peak extra memory is one (T, V) float32 slice even for bf16
    logits. Negative labels (the -100 ignore index) are gathered as token 0: mask them afterwards.
    """
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    index = labels.clamp(min=0).unsqueeze(-1)  # (B, T, 1)
    selected = logits.gather(-1, index).squeeze(-1).to(out_dtype)  # (B, T)
    logsumexp = torch.stack([torch.logsumexp(row.to(out_dtype), dim=-1) for row in logits])  # (B, T)
    return selected - logsumexp


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H(softmax(logits)) = −Σ_v p_v log p_v, in nats, per position.

    Shapes: logits (B, T, V) → (B, T) in float32 (float64 stays float64); computed one batch row
    at a time to bound peak memory.
    """
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = []
    for row in logits:  # (T, V)
        logp = torch.log_softmax(row.to(out_dtype), dim=-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------
# EOS handling
# --------------------------------------------------------------------------------------------


class EosTruncation(NamedTuple):
    """Result of :func:`truncate_after_eos`: ``ids, mask, has_eos = truncate_after_eos(...)``."""

    ids: Tensor
    """(B, T) token ids, everything after the first EOS replaced by the pad id"""
    mask: Tensor
    """(B, T) long, 1 on kept tokens (up to and including the first EOS), 0 after"""
    has_eos: Tensor
    """(B,) bool, True where the row contains an EOS (False: the response was cut at max length)"""


def truncate_after_eos(ids: Tensor, *, eos_token_id: int | Sequence[int], pad_token_id: int) -> EosTruncation:
    """Keep each row up to and including its first EOS; replace what follows by ``pad_token_id``.
    ``eos_token_id`` may be several stop tokens (e.g. Gemma's ``<eos>`` and ``<end_of_turn>``, Llama-3's
    ``<|end_of_text|>`` and ``<|eot_id|>``): the first of any of them ends the row.

    Shapes: ids (B, T) completion token ids (no prompt) → ``EosTruncation(ids (B, T),
    mask (B, T) long, has_eos (B,) bool)``. A row without EOS is kept whole (mask all 1) and
    flagged ``has_eos=False`` so the loop can penalise it (Huang et al. 2024, "N implementation
    details", the missing-EOS penalty). Works when pad and EOS share an id.
    """
    stops = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=ids.device)
    is_eos = torch.isin(ids, stops)  # (B, T)
    # number of EOS strictly before position t: 0 means "not yet past the first EOS"
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    keep = eos_before == 0  # (B, T)
    out = torch.where(keep, ids, torch.full_like(ids, pad_token_id))
    return EosTruncation(ids=out, mask=keep.long(), has_eos=is_eos.any(dim=1))


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last 1 in each row of ``mask`` (where a sequence-level score lands).

    Shapes: mask (B, T) bool or 0/1 → (B,) long. Works for right- and left-padded masks.
    Raises ValueError if a row has no 1 at all.
    """
    keep = mask.bool()
    if not bool(keep.any(dim=1).all()):
        raise ValueError("last_token_index: a row of the mask has no unmasked token")
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # 1..T
    return (keep.long() * positions).argmax(dim=1)


# --------------------------------------------------------------------------------------------
# generalized advantage estimation
# --------------------------------------------------------------------------------------------


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16), masked.

    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1}, where V and A after the last real
    token are 0 (the episode ends there: no bootstrap). Returns R_t = A_t + V_t.
    Shapes: rewards, values, mask (B, T) → (advantages (B, T), returns (B, T)); both are 0 where
    mask is 0. The mask must be one contiguous run of 1s per row (right or left padding); the
    result is not whitened (see :func:`masked_whiten`). No gradient flows (values are detached).
    """
    m = mask.to(values.dtype)
    # r = V = 0 on padding: after the last real token δ = 0, so A = 0 there and nothing is
    # carried back into the sequence, and the last real token bootstraps from V = 0
    values = values.detach() * m
    rewards = rewards.detach() * m
    T = rewards.shape[1]
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])  # A_{t+1}
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * m
    returns = (advantages + values) * m
    return advantages, returns


# --------------------------------------------------------------------------------------------
# KL estimators (Schulman 2020, "Approximating KL divergence"), per token, samples from the policy
# --------------------------------------------------------------------------------------------


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log p − log q: unbiased for KL(p‖q) under samples of p, high variance, can be < 0.

    Shapes: (B, T) → (B, T). p = policy (``logprobs``), q = reference (``ref_logprobs``).
    """
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = ½ (log p − log q)²: biased, low variance, ≥ 0. Shapes: (B, T) → (B, T)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = (r − 1) − log r with r = q/p: unbiased for KL(p‖q) and ≥ 0 (GRPO's estimator).

    Shapes: (B, T) → (B, T).
    """
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, *, estimator: str) -> Tensor:
    """Per-token KL(policy‖reference) estimate by name: ``"k1"``, ``"k2"`` or ``"k3"``.

    Shapes: (B, T) → (B, T). Unknown names raise ValueError listing the known ones.
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}") from None
    return fn(logprobs, ref_logprobs)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, computed stably (Mächler 2012): log(−expm1(x)) for x > −log 2,
    log1p(−exp(x)) otherwise. Shapes: any → same."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# --------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, §2.2)
# --------------------------------------------------------------------------------------------


class FixedKLController:
    """Constant KL coefficient β: ``.value`` never changes."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (kept so both controllers share one interface)."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, §2.2).

    e_t = clip((KL_t − KL_target) / KL_target, −0.2, 0.2);  β_{t+1} = β_t · (1 + e_t · n_steps / horizon).
    KL above target raises β (pulls the policy back), below target lowers it.
    """

    def __init__(self, init_kl_coef: float, *, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target=}, {horizon=}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``value`` after ``n_steps`` samples were seen with mean KL ``current_kl``."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


# --------------------------------------------------------------------------------------------
# running statistics for reward normalisation
# --------------------------------------------------------------------------------------------


class RunningMoments:
    """Running mean and standard deviation of every value seen so far (Chan et al. 1979 parallel
    update), for normalising rewards with running statistics (Ziegler et al. 2019).

    ``update(xs)`` folds in a batch and returns that batch's (mean, unbiased std); ``mean``,
    ``var`` (population) and ``std`` (unbiased) describe everything seen. Kept in float64 Python
    floats so long runs do not drift.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.std = 1.0
        self.count = 0

    def update(self, xs: Tensor) -> tuple[float, float]:
        """Fold a batch (any shape; every element counts once) into the running moments."""
        xs = xs.detach().double().flatten()
        n = xs.numel()
        if n == 0:
            raise ValueError("RunningMoments.update got an empty tensor")
        batch_mean = xs.mean().item()
        batch_var = xs.var(unbiased=False).item()
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total
        self.std = math.sqrt(self.var * total / (total - 1)) if total > 1 else 1.0
        batch_std = math.sqrt(batch_var * n / (n - 1)) if n > 1 else 0.0
        return batch_mean, batch_std

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "std": self.std, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean = float(state["mean"])
        self.var = float(state["var"])
        self.std = float(state["std"])
        self.count = int(state["count"])


# --------------------------------------------------------------------------------------------
# group-relative advantages (online methods with several samples per prompt)
# --------------------------------------------------------------------------------------------


def _grouped(scores: Tensor, group_size: int, who: str) -> Tensor:
    if scores.dim() != 1:
        raise ValueError(f"{who}: scores must be 1-D (num_prompts * group_size,), got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"{who}: group_size must be at least 2, got {group_size}")
    if scores.numel() % group_size != 0:
        raise ValueError(
            f"{who}: {scores.numel()} scores cannot be split into groups of {group_size}; "
            "scores must be laid out group-contiguous [p0s0, p0s1, ..., p1s0, ...]"
        )
    return scores.view(-1, group_size)  # (num_prompts, group_size)


def group_advantages(scores: Tensor, *, group_size: int, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO advantages (Shao et al. 2024, §4.1.2): (r − mean_group) / (std_group + eps).

    Shapes: scores (N,) group-contiguous [p0s0, p0s1, ..., p1s0, ...], N = num_prompts·group_size
    → (N,). std is the unbiased sample std of the group (as TRL). ``scale_by_std=False`` only
    centres (Dr. GRPO, Liu et al. 2025).
    """
    groups = _grouped(scores, group_size, "group_advantages")
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: Tensor, *, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024; Kool et al. 2019):
    A_i = r_i − mean of the other k−1 scores of the same prompt = k/(k−1) · (r_i − mean_group).

    Shapes: scores (N,) group-contiguous, N = num_prompts·group_size → (N,).
    """
    groups = _grouped(scores, group_size, "rloo_advantages")
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)
