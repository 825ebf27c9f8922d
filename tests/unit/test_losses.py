"""Hand-computed checks of every loss in rlhfkit.losses; the arithmetic sits next to the numbers.
Notation: sp(z) = −log σ(z) = log(1 + e^{−z}); note sp(−z) = sp(z) + z."""

import dataclasses
import math

import pytest
import torch

from rlhfkit.data.rankings import expand_ranking, flatten_ranking_pairs
from rlhfkit.ops import LOSS_AGGREGATIONS, aggregate_token_losses
from rlhfkit.losses import (
    AVG_LOGPS_LOSSES,
    DPO_LOSSES,
    LossOutput,
    bradley_terry_loss,
    dpo_loss,
    grpo_policy_loss,
    hinge_dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    ranking_loss,
    reward_centering_penalty,
    robust_dpo_loss,
    simpo_loss,
    soft_label_loss,
)

T = torch.tensor


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual).float(), torch.as_tensor(expected).float(), atol=atol, rtol=0)


def test_loss_output_is_a_frozen_dataclass():
    out = bradley_terry_loss(T([1.0]), T([0.0]))
    assert isinstance(out, LossOutput)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.losses = T([0.0])  # type: ignore[misc]


# ============================================================================ reward model


def test_bradley_terry_by_hand():
    # d = r_c − r_r = [1 − 0, 0 − 0.5] = [1, −0.5] → sp(1) = 0.313262, sp(−0.5) = 0.974077
    out = bradley_terry_loss(T([1.0, 0.0]), T([0.0, 0.5]))
    close(out.losses, [0.3132617, 0.9740770])
    close(out.stats["accuracy"], 0.5)  # only the first pair is ordered right
    close(out.stats["margin"], 0.25)  # (1 − 0.5)/2
    # margin m = 0.5: d − m = [0.5, −1.0] → sp(0.5) = 0.474077, sp(−1) = 1.313262
    close(bradley_terry_loss(T([1.0, 0.0]), T([0.0, 0.5]), margin=0.5).losses, [0.4740770, 1.3132617])
    close(bradley_terry_loss(T([1.0, 0.0]), T([0.0, 0.5]), margin=T([0.5, 0.0])).losses, [0.4740770, 0.9740770])


def test_soft_label_loss_by_hand_and_hard_labels_equal_bt():
    # p = 0.5, d = 1: ½·(sp(1) + sp(−1)) = ½·(0.313262 + 1.313262) = 0.813262
    close(soft_label_loss(T([1.0]), T([0.0]), label_prob=0.5).losses, [0.8132617])
    # p = 0.8, d = 1: 0.8·0.313262 + 0.2·1.313262 = 0.513262
    close(soft_label_loss(T([1.0]), T([0.0]), label_prob=T([0.8])).losses, [0.5132617])
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(5, generator=g), torch.randn(5, generator=g)
    assert torch.equal(soft_label_loss(rc, rr, label_prob=1.0).losses, bradley_terry_loss(rc, rr).losses)
    close(soft_label_loss(rc, rr, label_prob=0.0).losses, bradley_terry_loss(rr, rc).losses)
    with pytest.raises(ValueError, match="label_prob must lie in"):
        soft_label_loss(rc, rr, label_prob=1.5)


def test_ranking_loss_is_the_mean_over_each_prompts_pairs():
    # prompt 0: rewards [2, 1, 0], ranking [0, 1, 2] → d = 1, 2, 1 → (sp(1) + sp(2) + sp(1))/3
    #           = (0.313262 + 0.126928 + 0.313262)/3 = 0.251150
    # prompt 1: rewards [0.5, 1.5], ranking [0, 1] → d = −1 → sp(−1) = 1.313262
    rewards = T([2.0, 1.0, 0.0, 0.5, 1.5])
    index, probs, groups = flatten_ranking_pairs([expand_ranking([0, 1, 2], 3), expand_ranking([0, 1], 2)], [3, 2])
    out = ranking_loss(rewards, index, probs, groups, num_groups=2)
    close(out.losses, [0.2511505, 1.3132617])
    close(out.stats["accuracy"], 0.75)  # 3 of the 4 pairs ordered right
    close(out.stats["num_pairs"], 4.0)
    # identity: a K=2 prompt is exactly Bradley–Terry
    close(out.losses[1], bradley_terry_loss(T([0.5]), T([1.5])).losses[0])


def test_ranking_loss_with_ties():
    # [0, [1, 2]] soft: pairs (0,1,1), (0,2,1), (1,2,½); rewards [1, 0, 0]
    # → sp(1), sp(1), ½(sp(0) + sp(0)) = log 2 → (2·0.313262 + 0.693147)/3 = 0.439890
    # a prompt whose pairs are all skipped ties has loss 0 (group 1 has no pair)
    index, probs, groups = flatten_ranking_pairs([expand_ranking([0, [1, 2]], 3, ties="soft"), []], [3, 2])
    out = ranking_loss(T([1.0, 0.0, 0.0, 7.0, 7.0]), index, probs, groups, num_groups=2)
    close(out.losses, [(2 * 0.3132617 + math.log(2)) / 3, 0.0])
    close(out.stats["accuracy"], 1.0)  # the tie does not count


def test_ranking_loss_with_no_pair_at_all_is_zero():
    # every ranking fully tied and skipped: P = 0 (as torch.tensor([]) builds it) → losses [0, 0]
    empty = torch.tensor([])
    out = ranking_loss(T([1.0, 2.0, 3.0]), empty, empty, empty, num_groups=2)
    assert out.losses.tolist() == [0.0, 0.0]
    assert out.stats["num_pairs"].item() == 0.0


def test_ranking_loss_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match=r"pairs_index must have shape \(P, 2\)"):
        ranking_loss(T([0.0, 1.0]), torch.tensor([0, 1]), T([1.0]), torch.tensor([0]), num_groups=1)
    with pytest.raises(ValueError, match="must both have shape"):
        ranking_loss(T([0.0, 1.0]), torch.tensor([[0, 1]]), T([1.0, 1.0]), torch.tensor([0]), num_groups=1)


def test_reward_centering_penalty_by_hand():
    # (1 + 0.5)² = 2.25, (−1 + 0.2)² = 0.64 ; coef 0.01 → [0.0225, 0.0064]
    out = reward_centering_penalty(T([1.0, -1.0]), T([0.5, 0.2]), coef=0.01)
    close(out.losses, [0.0225, 0.0064])
    close(out.stats["reward_mean"], 0.175)  # (1 − 1 + 0.5 + 0.2)/4


# ============================================================================ DPO family

# example 0: chosen log-ratio 0.5 − 0.2 = 0.3, rejected 0.1 − 0.4 = −0.3, β = 0.1 → βh = 0.06
# example 1: chosen −1 − (−2) = 1, rejected −3 − (−2) = −1, β = 0.1 → βh = 0.2
PC, PR, RC, RR = T([0.5, -1.0]), T([0.1, -3.0]), T([0.2, -2.0]), T([0.4, -2.0])


def test_dpo_loss_by_hand():
    # sp(0.06) = 0.663597 ; sp(0.2) = 0.598139
    out = dpo_loss(PC, PR, RC, RR, beta=0.1)
    close(out.losses, [0.6635971, 0.5981389])
    # implicit rewards β·log-ratio: chosen [0.03, 0.1] mean 0.065, rejected [−0.03, −0.1] mean −0.065
    close(out.stats["rewards/chosen"], 0.065)
    close(out.stats["rewards/rejected"], -0.065)
    close(out.stats["rewards/accuracies"], 1.0)
    close(out.stats["rewards/margins"], 0.13)


def test_dpo_at_the_reference_is_log_two_with_zero_rewards():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(4, generator=g) - 5, torch.randn(4, generator=g) - 5
    out = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.3)
    close(out.losses, torch.full((4,), math.log(2.0)), atol=1e-7)  # −log σ(0) = log 2
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert out.stats[key].item() == 0.0, key


def test_cdpo_label_smoothing_and_soft_labels_by_hand():
    # ε = 0.1: 0.9·sp(0.06) + 0.1·sp(−0.06) = sp(0.06) + 0.1·0.06 = 0.663597 + 0.006 = 0.669597
    close(dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1, label_smoothing=0.1).losses, [0.6695971])
    # p = 0.7: sp(0.06) + 0.3·0.06 = 0.681597
    close(dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1, label_prob=0.7).losses, [0.6815971])
    # both: p_eff = 0.7·0.9 + 0.3·0.1 = 0.66 → sp(0.06) + 0.34·0.06 = 0.683997
    close(dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1, label_prob=0.7, label_smoothing=0.1).losses, [0.6839971])
    # p = 1 is exactly plain DPO ; per-example tensor labels
    assert torch.equal(dpo_loss(PC, PR, RC, RR, beta=0.1, label_prob=T([1.0, 1.0])).losses,
                       dpo_loss(PC, PR, RC, RR, beta=0.1).losses)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.7)


def test_dpo_gradient_signs():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    dpo_loss(pc, pr, RC, RR, beta=0.1).losses.sum().backward()
    assert (pc.grad < 0).all()  # raising the chosen log-prob lowers the loss
    assert (pr.grad > 0).all()  # raising the rejected log-prob raises it
    # d sp(βh)/d logp_c = −β·σ(−βh): example 0 → −0.1·σ(−0.06) = −0.1·0.485004 = −0.0485004
    close(pc.grad[0], -0.0485004)


def test_robust_dpo_by_hand():
    # ε = 0.1: (0.9·sp(0.06) − 0.1·sp(−0.06)) / 0.8 = (0.597237 − 0.072360)/0.8 = 0.656097
    close(robust_dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1, label_smoothing=0.1).losses, [0.6560971])
    # ε = 0 is plain DPO
    plain = dpo_loss(PC, PR, RC, RR, beta=0.1).losses
    close(robust_dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.0).losses, plain)
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 0.5\)"):
        robust_dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.5)


def test_hinge_dpo_by_hand():
    # relu(1 − 0.06) = 0.94 ; relu(1 − 0.2) = 0.8 ; β = 1: βh = [0.6, 2] → [0.4, 0]
    close(hinge_dpo_loss(PC, PR, RC, RR, beta=0.1).losses, [0.94, 0.8])
    close(hinge_dpo_loss(PC, PR, RC, RR, beta=1.0).losses, [0.4, 0.0])


def test_ipo_by_hand():
    # h = [0.6, 2] (read as averaged log-ratios); β = 0.1 → 1/(2β) = 5 → (0.6 − 5)² = 19.36, (2 − 5)² = 9
    close(ipo_loss(PC, PR, RC, RR, beta=0.1).losses, [19.36, 9.0], atol=1e-5)
    # β = 1 → 1/(2β) = 0.5 → (0.1)² = 0.01, (1.5)² = 2.25
    close(ipo_loss(PC, PR, RC, RR, beta=1.0).losses, [0.01, 2.25])


def test_dpo_losses_registry():
    assert DPO_LOSSES == {"sigmoid": dpo_loss, "robust": robust_dpo_loss, "hinge": hinge_dpo_loss, "ipo": ipo_loss}
    assert AVG_LOGPS_LOSSES == {"ipo"} and AVG_LOGPS_LOSSES <= DPO_LOSSES.keys()


# ============================================================================ reference-free


def test_orpo_odds_ratio_by_hand():
    # P_c = 0.5 → odds 0.5/0.5 = 1 ; P_r = 0.2 → odds 0.2/0.8 = 0.25 ; log OR = log 4 = 1.386294
    # L_OR = sp(log 4) = log(1 + 1/4) = 0.223144 ; total = nll 0.7 + λ 0.1·0.223144 = 0.722314
    out = orpo_loss(T([math.log(0.5)]), T([math.log(0.2)]), T([0.7]), lam=0.1)
    close(out.losses, [0.7223144])
    close(out.stats["log_odds_chosen"], math.log(4.0))
    close(out.stats["log_odds_ratio"], -math.log(1.25))
    close(out.stats["or_loss"], math.log(1.25))
    close(out.stats["nll"], 0.7)


def test_orpo_is_finite_near_probability_one():
    # avg logp −1e-3 (P ≈ 0.999) and 0 (P = 1, clamped to −1e-6): finite loss and gradient
    chosen = T([-1e-3, 0.0]).requires_grad_()
    out = orpo_loss(chosen, T([-20.0, -0.5]), T([0.0, 0.0]), lam=1.0)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(chosen.grad).all()


def test_simpo_by_hand_and_gamma_shifts_the_logit():
    # β = 2, γ = 0.5: 2·(−1 − (−1.5)) − 0.5 = 0.5 → sp(0.5) = 0.474077
    out = simpo_loss(T([-1.0]), T([-1.5]), beta=2.0, gamma=0.5)
    close(out.losses, [0.4740770])
    close(out.stats["rewards/chosen"], -2.0)  # β·avg_c
    close(out.stats["rewards/margins"], 1.0)  # 2·0.5
    # γ subtracts exactly γ from the logit: γ = 0.5 equals γ = 0 with the chosen lowered by γ/β = 0.25
    g = torch.Generator().manual_seed(1)
    c, r = -torch.rand(6, generator=g) * 3, -torch.rand(6, generator=g) * 3
    close(simpo_loss(c, r, beta=2.0, gamma=0.5).losses, simpo_loss(c - 0.25, r, beta=2.0, gamma=0.0).losses)
    close(simpo_loss(c, r, beta=2.0, gamma=0.5).losses, -torch.nn.functional.logsigmoid(2.0 * (c - r) - 0.5))


def test_kto_by_hand():
    # β = 0.5, z0 = 0.2
    # desirable, r = 1.0:   1 − σ(0.5·(1.0 − 0.2) = 0.4)  = 1 − 0.598688 = 0.401312
    # undesirable, r = 1.0: 1.5·(1 − σ(0.5·(0.2 − 1.0) = −0.4)) = 1.5·0.598688 = 0.898031
    # undesirable, r = −0.6: 1.5·(1 − σ(0.5·0.8 = 0.4)) = 1.5·0.401312 = 0.601969
    policy, ref = T([0.0, 0.0, -1.6]), T([-1.0, -1.0, -1.0])
    out = kto_loss(policy, ref, T([True, False, False]), kl_reference=T(0.2), beta=0.5, undesirable_weight=1.5)
    close(out.losses, [0.4013123, 0.8980315, 0.6019685])
    close(out.stats["kl"], 0.2)
    close(out.stats["rewards/chosen"], 0.5)  # β·1.0
    close(out.stats["rewards/rejected"], 0.1)  # β·(1.0 − 0.6)/2


def test_kto_reference_point_is_clamped_and_detached():
    # mean log-ratio (0.5 + 0.3 − 0.2)/3 = 0.2
    policy = T([-1.0, -2.0, -3.0]).requires_grad_()
    z0 = kto_reference_point(policy, T([-1.5, -2.3, -2.8]))
    close(z0, 0.2)
    assert not z0.requires_grad
    close(kto_reference_point(T([-1.0]), T([-0.5])), 0.0)  # −0.5 → clamped to 0
    # a negative kl_reference is clamped too, and no gradient reaches it
    kl = T(-0.3).requires_grad_()
    out = kto_loss(T([0.0]), T([0.0]), T([True]), kl_reference=kl, beta=1.0)
    close(out.losses, [0.5])  # 1 − σ(1·(0 − 0)) with z0 = 0
    assert not out.losses.requires_grad


# ============================================================================ PPO / GRPO


def test_ppo_policy_loss_at_the_first_minibatch():
    g = torch.Generator().manual_seed(0)
    logp, adv = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    mask = T([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    out = ppo_policy_loss(logp, logp.clone(), adv, mask, cliprange=0.2)
    assert out.stats["policy/ratio_mean"].item() == 1.0
    assert out.stats["policy/approxkl"].item() == 0.0
    assert out.stats["policy/clipfrac"].item() == 0.0
    close(out.losses, [-adv[0].mean(), -adv[1, :2].mean(), -adv[2, 0]])  # −A averaged per sequence


def test_ppo_policy_loss_with_clipping_by_hand():
    # ε = 0.2; row 0: ratio 1.5, A = 1 → max(−1.5, −1.2) = −1.2 (clipped) ;
    #                 ratio 0.5, A = 1 → max(−0.5, −0.8) = −0.5 ; pad → (−1.2 − 0.5)/2 = −0.85
    # row 1:          ratio 0.5, A = −2 → max(1.0, 1.6) = 1.6 (clipped) ;
    #                 ratio 1.1, A = −1 → max(1.1, 1.1) = 1.1 ; pad → (1.6 + 1.1)/2 = 1.35
    old = torch.zeros(2, 3)
    logp = T([[math.log(1.5), math.log(0.5), 9.0], [math.log(0.5), math.log(1.1), 9.0]])
    adv = T([[1.0, 1.0, 5.0], [-2.0, -1.0, 5.0]])
    mask = T([[1, 1, 0], [1, 1, 0]])
    out = ppo_policy_loss(logp, old, adv, mask, cliprange=0.2)
    close(out.losses, [-0.85, 1.35])
    close(out.stats["policy/clipfrac"], 0.5)  # 2 of 4 tokens clipped
    close(out.stats["policy/ratio_mean"], 0.9)  # (1.5 + 0.5 + 0.5 + 1.1)/4
    # ½·(log²1.5 + 2·log²0.5 + log²1.1)/4 = ½·(0.164402 + 0.960906 + 0.009084)/4 = 0.141799
    close(out.stats["policy/approxkl"], 0.1417990)


def test_ppo_value_loss_by_hand():
    # c = 0.2; (v=1.0, old=0.5, R=1.2): clipped v = 0.7 → ½·max(0.04, 0.25) = 0.125 (clipped wins)
    #          (v=0.4, old=0.5, R=0.0): inside the clip → ½·0.16 = 0.08 → row 0 = 0.1025
    #          (v=2.0, old=1.0, R=3.0): clipped v = 1.2 → ½·max(1.0, 3.24) = 1.62 → row 1 = 1.62
    values = T([[1.0, 0.4], [2.0, -7.0]])
    old = T([[0.5, 0.5], [1.0, 0.0]])
    returns = T([[1.2, 0.0], [3.0, 0.0]])
    out = ppo_value_loss(values, old, returns, T([[1, 1], [1, 0]]), cliprange_value=0.2)
    close(out.losses, [0.1025, 1.62])
    close(out.stats["val/clipfrac"], 2 / 3)
    close(out.stats["val/vpred"], (1.0 + 0.4 + 2.0) / 3)
    close(out.stats["val/error"], (0.04 + 0.16 + 1.0) / 3)


def test_grpo_policy_loss_by_hand():
    # ratio 1 everywhere, A = [1, −0.5] → surrogate −A per token
    # row 0: logp −1, ref −1.5 → log r = −0.5 → k3 = e^{−0.5} − 1 + 0.5 = 0.106531 ; kl_coef 0.1
    #        → −1 + 0.1·0.106531 = −0.989347
    # row 1: ref = logp → k3 = 0 → 0.5 ; its last token is padding
    logp = T([[-1.0, -1.0], [-2.0, -2.0]])
    ref = T([[-1.5, -1.5], [-2.0, 50.0]])
    out = grpo_policy_loss(logp, logp.clone(), T([1.0, -0.5]), T([[1, 1], [1, 0]]), cliprange=0.2,
                           ref_logprobs=ref, kl_coef=0.1)
    close(out.losses, [-0.9893469, 0.5])
    close(out.stats["kl"], 2 * 0.1065307 / 3)  # (0.106531·2 + 0)/3 tokens
    # clipping: ratio 1.5 with A = 1, ε = 0.2 → −1.2
    clipped = grpo_policy_loss(T([[math.log(1.5)]]), T([[0.0]]), T([1.0]), T([[1]]), cliprange=0.2)
    close(clipped.losses, [-1.2])
    close(clipped.stats["policy/clipfrac"], 1.0)


def test_grpo_equals_ppo_with_broadcast_advantages_without_kl():
    g = torch.Generator().manual_seed(2)
    logp, old = torch.randn(3, 5, generator=g) * 0.3, torch.randn(3, 5, generator=g) * 0.3
    adv = torch.randn(3, generator=g)
    mask = T([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    grpo = grpo_policy_loss(logp, old, adv, mask, cliprange=0.2)
    ppo = ppo_policy_loss(logp, old, adv[:, None].expand(3, 5), mask, cliprange=0.2)
    assert torch.equal(grpo.losses, ppo.losses)


def test_grpo_rejects_bad_arguments():
    logp = torch.zeros(2, 3)
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"advantages must be per sequence \(B,\)"):
        grpo_policy_loss(logp, logp, torch.zeros(2, 4), mask, cliprange=0.2)  # (B, T) is allowed, not (B, T+1)
    with pytest.raises(ValueError, match="kl_coef != 0 needs ref_logprobs"):
        grpo_policy_loss(logp, logp, torch.zeros(2), mask, cliprange=0.2, kl_coef=0.1)


# ---------------------------------------------------------------- how per-token losses are aggregated


def test_the_three_loss_aggregations_by_hand():
    # two responses: [1, 2, 3] (3 tokens) and [6, pad, pad] (1 token); max_length 4
    # seq_mean_token_mean (GRPO): (6/3 + 6/1)/2 = (2 + 6)/2 = 4
    # token_mean (DAPO, PPO):     (1 + 2 + 3 + 6)/4 tokens = 3
    # seq_sum_norm (Dr. GRPO):    (6 + 6)/(2 responses · 4) = 1.5
    per_token = T([[1.0, 2.0, 3.0], [6.0, 99.0, 99.0]])
    mask = T([[1, 1, 1], [1, 0, 0]])
    means = {mode: aggregate_token_losses(per_token, mask, mode=mode, max_length=4).mean().item()
             for mode in LOSS_AGGREGATIONS}
    assert means == pytest.approx({"seq_mean_token_mean": 4.0, "token_mean": 3.0, "seq_sum_norm": 1.5})
    with pytest.raises(ValueError, match="seq_sum_norm needs max_length"):
        aggregate_token_losses(per_token, mask, mode="seq_sum_norm")
    with pytest.raises(ValueError, match="must be one of"):
        aggregate_token_losses(per_token, mask, mode="sum")


def test_dr_grpo_loss_has_no_length_normalisation():
    # ratio 1 and A = 1 on every token: the surrogate is −1 per token. Per-response means give
    # every response −1 whatever its length; Dr. GRPO's constant normaliser makes the loss of a
    # response proportional to its length: −3/4 and −1/4 with max_length 4.
    logp = torch.zeros(2, 3)
    mask = T([[1, 1, 1], [1, 0, 0]])
    grpo = grpo_policy_loss(logp, logp.clone(), T([1.0, 1.0]), mask, cliprange=0.2)
    dr = grpo_policy_loss(logp, logp.clone(), T([1.0, 1.0]), mask, cliprange=0.2,
                          loss_aggregation="seq_sum_norm", max_length=4)
    close(grpo.losses, [-1.0, -1.0])
    close(dr.losses, [-0.75, -0.25])
    # the k3 KL term is aggregated the same way: row 0 log r = ref − logp = −0.5, k3 = e^{−0.5} − 1 + 0.5
    # = 0.106531 per token
    ref = T([[-0.5, -0.5, -0.5], [0.0, 0.0, 0.0]])
    with_kl = grpo_policy_loss(logp, logp.clone(), T([1.0, 1.0]), mask, cliprange=0.2, ref_logprobs=ref,
                               kl_coef=1.0, loss_aggregation="seq_sum_norm", max_length=4)
    close(with_kl.losses, [-0.75 + 3 * 0.1065307 / 4, -0.25])


def test_token_mean_weighs_every_token_the_same_in_ppo():
    # A = 1 on row 0 (3 tokens), A = −1 on row 1 (1 token), ratio 1: token mean (−3 + 1)/4 = −0.5,
    # per-response mean (−1 + 1)/2 = 0 ; value loss ½(v − R)² with v − R = 1 everywhere: ½ either way
    logp = torch.zeros(2, 3)
    mask = T([[1, 1, 1], [1, 0, 0]])
    adv = T([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    close(ppo_policy_loss(logp, logp, adv, mask, cliprange=0.2, loss_aggregation="token_mean").losses.mean(), -0.5)
    close(ppo_policy_loss(logp, logp, adv, mask, cliprange=0.2).losses.mean(), 0.0)
    values = torch.ones(2, 3)
    vf = ppo_value_loss(values, values, torch.zeros(2, 3), mask, cliprange_value=0.2, loss_aggregation="token_mean")
    close(vf.losses.mean(), 0.5)
