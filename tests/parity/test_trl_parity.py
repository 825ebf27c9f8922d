"""Parity of rlhfkit's losses with TRL's own code (TRL 1.16; skipped when trl is not installed).

TRL computes its losses inside trainer methods that read trainer state, so each check builds the
smallest trainer object the method needs (``object.__new__`` + the attributes it reads) and, where
the method runs a model, a fake model that returns fixed per-token log-probs through TRL's
fused-LM-head output fields. The same random log-probs then go through rlhfkit (per-token values
reduced with ``rlhfkit.ops.masked_sum`` / ``masked_mean``) and must agree to 1e-5.

What is compared, and where TRL 1.16 computes it:
- DPO sigmoid, IPO, hinge, robust: ``trl.DPOTrainer._compute_loss`` (loss and rewards/* metrics).
  IPO: TRL divides each response's summed log-ratio by ITS OWN completion length — the same as
  rlhfkit's ``ipo_loss`` on length-averaged policy and reference log-probs.
- cDPO label smoothing: TRL 1.16's DPOTrainer no longer smooths the sigmoid loss (its
  ``label_smoothing`` now only feeds robust / EXO / AOT). The former DPO sigmoid formula survives
  verbatim in ``trl.experimental.cpo.CPOTrainer.cpo_loss(loss_type="sigmoid")``, which is DPO with
  the reference log-probs set to 0; feeding it the log-ratios (policy − reference) gives cDPO.
- SimPO: ``CPOTrainer.cpo_loss(loss_type="simpo")``. TRL writes β·(Δavg − γ/β): the same logit
  β·Δavg − γ as Meng et al. eq. 6, so ``simpo_gamma`` is our ``gamma``.
- ORPO: ``trl.experimental.orpo.ORPOTrainer.odds_ratio_loss``. TRL returns +λ·log σ(log OR) and
  subtracts its batch mean from a scalar NLL (token mean over the batch, prompt included);
  rlhfkit returns per-example NLL + λ·(−log σ(log OR)). The odds-ratio term is compared per
  example, and the total with the same NLL for every example. TRL's ``beta`` is our ``lam``.
- KTO: ``trl.KTOTrainer._compute_loss`` (loss, the kl reference point, rewards/*). TRL orders the
  per-example losses desirable-first before the mean; the mean is what is compared.
- Reward model: ``trl.RewardTrainer.compute_loss`` (Bradley–Terry with margin + centring term).
- ``logprobs_from_logits`` / ``entropy_from_logits`` vs ``trl.trainer.utils.selective_log_softmax``
  / ``entropy_from_logits``.
Not compared: GRPO / PPO losses (TRL 1.16 computes them inline from generation state in
GRPOTrainer; PPO is no longer in TRL), ranking_loss (no TRL counterpart).
"""

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")

from trl import DPOTrainer, KTOTrainer, RewardTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402
from trl.trainer.utils import entropy_from_logits as trl_entropy  # noqa: E402
from trl.trainer.utils import selective_log_softmax  # noqa: E402

from rlhfkit.losses import (  # noqa: E402
    bradley_terry_loss,
    dpo_loss,
    hinge_dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    reward_centering_penalty,
    robust_dpo_loss,
    simpo_loss,
)
from rlhfkit.ops import entropy_from_logits, logprobs_from_logits, masked_mean, masked_sum  # noqa: E402

ATOL = 1e-5


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=ATOL, rtol=0)


class _Accelerator:
    """Single process: gather is the identity."""

    device = torch.device("cpu")

    def gather(self, tensor):
        return tensor

    def gather_for_metrics(self, tensor):
        return tensor

    def unwrap_model(self, model):
        return model


class _FakeLM:
    """Stands in for a causal LM with TRL's fused LM head: returns fixed per-token log-probs,
    chosen by the width of ``input_ids`` (so KTO's KL batch can get its own)."""

    training = True

    def __init__(self, log_probs_by_width):
        self.log_probs_by_width = log_probs_by_width

    def __call__(self, input_ids=None, **kwargs):
        log_probs = self.log_probs_by_width[input_ids.shape[1]]
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool(), aux_loss=None)


def _bare(cls, **attrs):
    obj = object.__new__(cls)
    common = dict(accelerator=_Accelerator(), aux_loss_enabled=False, _tp_size=1, _total_train_tokens=0,
                  _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    for name, value in {**common, **attrs}.items():
        setattr(obj, name, value)
    return obj


def _completion_batch(num_rows, width, seed):
    """Per-token log-probs of ``num_rows`` completions of random lengths 1..width−1 after one
    prompt token. Returns (input_ids (N, width), completion_mask (N, width), per-token policy and
    reference log-probs (N, width−1), zero on padding, and the shifted mask (N, width−1))."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width, (num_rows,), generator=g)
    shifted = (torch.arange(width - 1)[None, :] < lengths[:, None]).long()  # (N, width−1)
    completion_mask = torch.cat([torch.zeros(num_rows, 1, dtype=torch.long), shifted], dim=1)  # prompt token first
    policy = -torch.rand(num_rows, width - 1, generator=g, dtype=torch.float64) * 3 * shifted
    ref = -torch.rand(num_rows, width - 1, generator=g, dtype=torch.float64) * 3 * shifted
    input_ids = torch.randint(3, 50, (num_rows, width), generator=g)
    return input_ids, completion_mask, policy, ref, shifted


# ---------------------------------------------------------------------------- DPO family


def _trl_dpo(loss_type, *, beta, label_smoothing=0.0, batch=4, width=7, seed=0):
    input_ids, completion_mask, policy, ref, shifted = _completion_batch(2 * batch, width, seed)
    ref_sums = masked_sum(ref, shifted, dim=1)
    model = _FakeLM({width: policy})
    trainer = _bare(DPOTrainer, model=model, beta=beta, label_smoothing=label_smoothing, loss_types=[loss_type],
                    loss_weights=[1.0], ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                    use_weighting=False)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "completion_mask": completion_mask,
              "ref_chosen_logps": ref_sums[:batch], "ref_rejected_logps": ref_sums[batch:]}
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    # rlhfkit inputs from the same per-token tensors: sums and per-response averages
    sums, avgs = masked_sum(policy, shifted, dim=1), masked_mean(policy, shifted, dim=1)
    ref_avgs = masked_mean(ref, shifted, dim=1)
    ours_sum = (sums[:batch], sums[batch:], ref_sums[:batch], ref_sums[batch:])
    ours_avg = (avgs[:batch], avgs[batch:], ref_avgs[:batch], ref_avgs[batch:])
    return loss, metrics, ours_sum, ours_avg


@pytest.mark.parametrize(
    ("loss_type", "ours", "kwargs"),
    [
        ("sigmoid", dpo_loss, {}),
        ("hinge", hinge_dpo_loss, {}),
        ("robust", robust_dpo_loss, {"label_smoothing": 0.2}),
    ],
)
def test_dpo_family_matches_trl(loss_type, ours, kwargs):
    for beta in (0.1, 0.5):
        loss, metrics, summed, _ = _trl_dpo(loss_type, beta=beta, label_smoothing=kwargs.get("label_smoothing", 0.0))
        out = ours(*summed, beta=beta, **kwargs)
        close(out.losses.mean(), loss)
        for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
            close(out.stats[key], metrics[key])


def test_ipo_matches_trl_with_length_averaged_log_ratios():
    for beta in (0.1, 1.0):
        loss, _, summed, averaged = _trl_dpo("ipo", beta=beta, seed=3)
        close(ipo_loss(*averaged, beta=beta).losses.mean(), loss)
        # and TRL's IPO is NOT IPO on summed log-ratios (the lengths differ in this batch)
        assert abs(ipo_loss(*summed, beta=beta).losses.mean().item() - loss.item()) > 1e-3


def test_cdpo_label_smoothing_matches_trl_legacy_sigmoid():
    g = torch.Generator().manual_seed(5)
    pc, pr, rc, rr = (-torch.rand(6, generator=g, dtype=torch.float64) * 30 for _ in range(4))
    for beta, eps in ((0.1, 0.1), (0.5, 0.3)):
        trainer = _bare(CPOTrainer, alpha=0.0, loss_type="sigmoid", beta=beta, label_smoothing=eps)
        trl_losses, trl_chosen, trl_rejected = trainer.cpo_loss(pc - rc, pr - rr)  # log-ratios in
        out = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
        close(out.losses, trl_losses)
        close(out.stats["rewards/chosen"], trl_chosen.mean())
        close(out.stats["rewards/rejected"], trl_rejected.mean())


# ---------------------------------------------------------------------------- reference-free


def test_simpo_matches_trl():
    g = torch.Generator().manual_seed(6)
    chosen, rejected = -torch.rand(6, generator=g, dtype=torch.float64) * 3, -torch.rand(6, generator=g) * 3
    rejected = rejected.double()
    for beta, gamma in ((2.0, 0.5), (2.5, 1.4)):
        trainer = _bare(CPOTrainer, alpha=0.0, loss_type="simpo", beta=beta, label_smoothing=0.0, simpo_gamma=gamma)
        trl_losses, trl_chosen, _ = trainer.cpo_loss(chosen, rejected)
        out = simpo_loss(chosen, rejected, beta=beta, gamma=gamma)
        close(out.losses, trl_losses)
        close(out.stats["rewards/chosen"], trl_chosen.mean())


def test_orpo_odds_ratio_matches_trl():
    g = torch.Generator().manual_seed(7)
    # average log-probs across both branches of log1mexp (−log 2 ≈ −0.69): −0.01 … −4
    chosen = -(torch.rand(8, generator=g, dtype=torch.float64) * 4 + 0.01)
    rejected = -(torch.rand(8, generator=g, dtype=torch.float64) * 4 + 0.01)
    lam, nll = 0.25, 1.7
    trainer = _bare(ORPOTrainer, beta=lam)
    trl_losses, _, _, trl_log_odds_ratio, trl_log_odds_chosen = trainer.odds_ratio_loss(chosen, rejected)
    # odds-ratio term alone (zero NLL): ours = −TRL per example
    ours = orpo_loss(chosen, rejected, torch.zeros(8, dtype=torch.float64), lam=lam)
    close(ours.losses, -trl_losses)
    close(ours.stats["log_odds_ratio"], trl_log_odds_ratio)
    close(ours.stats["log_odds_chosen"], trl_log_odds_chosen)
    # total: TRL's loss = nll − mean(losses) ; ours with the same nll on every example
    total = orpo_loss(chosen, rejected, torch.full((8,), nll, dtype=torch.float64), lam=lam)
    close(total.losses.mean(), nll - trl_losses.mean())


# ---------------------------------------------------------------------------- KTO


def test_kto_matches_trl():
    batch, width, kl_width = 6, 6, 7
    input_ids, completion_mask, policy, ref, shifted = _completion_batch(batch, width, seed=8)
    kl_ids, kl_mask, kl_policy, kl_ref, kl_shifted = _completion_batch(batch, kl_width, seed=9)
    kl_policy = kl_policy + 0.4 * kl_shifted  # push the mean log-ratio above 0 so the clamp is not hit
    labels = torch.tensor([True, False, True, True, False, False])
    ref_sums, kl_ref_sums = masked_sum(ref, shifted, dim=1), masked_sum(kl_ref, kl_shifted, dim=1)
    model = _FakeLM({width: policy, kl_width: kl_policy})
    for beta, w_d, w_u in ((0.1, 1.0, 1.0), (0.5, 1.3, 0.7)):
        trainer = _bare(KTOTrainer, model=model, beta=beta, desirable_weight=w_d, undesirable_weight=w_u,
                        loss_type="kto", calculate_KL=True, precompute_ref_logps=True)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                  "completion_mask": completion_mask, "KL_input_ids": kl_ids,
                  "KL_attention_mask": torch.ones_like(kl_ids), "KL_completion_mask": kl_mask,
                  "label": labels, "ref_logps": ref_sums, "ref_KL_logps": kl_ref_sums}
        loss = trainer._compute_loss(model, inputs, return_outputs=False)
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

        z0 = kto_reference_point(masked_sum(kl_policy, kl_shifted, dim=1), kl_ref_sums)
        assert z0.item() > 0
        out = kto_loss(masked_sum(policy, shifted, dim=1), ref_sums, labels, kl_reference=z0, beta=beta,
                       desirable_weight=w_d, undesirable_weight=w_u)
        close(out.losses.mean(), loss)
        close(z0, metrics["kl"])
        close(out.stats["rewards/chosen"], metrics["rewards/chosen"])
        close(out.stats["rewards/rejected"], metrics["rewards/rejected"])


# ---------------------------------------------------------------------------- reward model


def test_reward_model_loss_matches_trl():
    g = torch.Generator().manual_seed(10)
    chosen, rejected = torch.randn(5, generator=g), torch.randn(5, generator=g)
    margin = torch.rand(5, generator=g)
    model = SimpleNamespace(training=True)
    trainer = _bare(RewardTrainer, model=model, args=SimpleNamespace(center_rewards_coefficient=0.01))

    def reward_model(**_):
        return SimpleNamespace(logits=torch.cat([chosen, rejected])[:, None])  # (2B, 1)

    inputs = {"input_ids": torch.ones(10, 3, dtype=torch.long), "attention_mask": torch.ones(10, 3), "margin": margin}
    loss = trainer.compute_loss(reward_model, inputs)
    ours = bradley_terry_loss(chosen, rejected, margin=margin)
    centring = reward_centering_penalty(chosen, rejected, coef=0.01)
    close(ours.losses.mean() + centring.losses.mean(), loss)
    close(ours.stats["accuracy"], trainer._metrics["train"]["accuracy"][-1])
    close(ours.stats["margin"], trainer._metrics["train"]["margin"][-1])


# ---------------------------------------------------------------------------- ops


def test_logprobs_and_entropy_match_trl():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, 17, generator=g) * 3
    labels = torch.randint(0, 17, (3, 5), generator=g)
    close(logprobs_from_logits(logits, labels), selective_log_softmax(logits, labels))
    close(entropy_from_logits(logits), trl_entropy(logits))
    low = logits.bfloat16()  # TRL returns bf16 here; ours keeps float32, so compare at bf16 precision
    torch.testing.assert_close(logprobs_from_logits(low, labels), selective_log_softmax(low, labels).float(),
                               atol=5e-2, rtol=0)
