"""GRPO (Shao et al. 2024, "DeepSeekMath", §4.1): online RL without a value model, from several
samples per prompt, and the loop RLOO (:mod:`.rloo`) shares.

Both draw ``num_generations`` (n) responses for each of ``batch_size / n`` prompts and compare each
response with its siblings. GRPO's advantage is (r − mean_group) / std_group on every token, with a
clipped ratio and KL(π‖π_ref) as k3 in the loss (eq. 3–4); Dr. GRPO (Liu et al. 2025) drops the std
scaling and the per-response length normalisation. Either method may put the KL in the loss or in
the reward (``kl_in``).

This file reads top to bottom: the configs, the advantages, the loss, the loop. The rollout,
scoring, reference, update, logging and checkpoints are those of PPO (:mod:`.rollout`,
:mod:`.update`, :mod:`.run`).

One iteration: 1. generate n per prompt 2. score (+ missing-EOS penalty) 3. reference log-probs,
KL 4. group advantages 5. epochs × minibatches of the clipped loss 6. log, checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import require
from rlhfkit.losses import grpo_policy_loss
from rlhfkit.ops import LossAggregation, group_advantages, kl_estimate
from rlhfkit.train import distributed
from rlhfkit.train.rl.offpolicy import tis_advantages
from rlhfkit.train.rl.policy import Outputs
from rlhfkit.train.rl.rollout import Experience, chunk_seed, collect, complete_experience, objective_metrics
from rlhfkit.train.rl.run import RLConfig, RLRun, set_up
from rlhfkit.train.rl.update import optimise
from rlhfkit.train.run import enable_gradient_checkpointing, make_accelerator, process_count
from rlhfkit.train.optim import optimizer_and_schedule


@dataclass
class GroupConfig(RLConfig):
    """Fields GRPO and RLOO share."""

    num_generations: int = 4
    """responses sampled per prompt (n); batch_size must be a multiple of it"""
    kl_in: Literal["loss", "reward"] = "loss"
    """where the KL penalty goes: per-token k3 in the loss (GRPO) or Σ_t KL_t subtracted from the reward (RLOO)"""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """per-token estimator of the KL in the reward (kl_in=reward); the loss always uses k3"""
    whiten_advantages: bool = False
    """whiten the sequence advantages over the whole batch as well"""
    num_ppo_epochs: int = 1
    """optimisation passes over each batch (1: GRPO's μ = 1, the ratio is exactly 1)"""
    num_minibatches: int = 1
    """optimiser steps per pass (advantages are computed on the whole batch first, so rows of one
    group may land in different minibatches)"""

    @property
    def old_logprobs_from_update(self) -> bool:
        """Skip the old-policy pass and take the old log-probs from the update's forward, detached (TRL
        does the same): when the batch serves one update, nothing needs them before it (no KL in the
        reward, no TIS weights) and dropout is off (the rollout-time pass runs without it)."""
        kl_before_update = self.kl_in == "reward" and self.kl_coef > 0
        return (self.one_update_per_batch and self.disable_dropout and not kl_before_update
                and not self.rollout.tis_cap)

    def validate(self, *, extra_rewards: int = 0) -> None:
        super().validate(extra_rewards=extra_rewards)
        require(self.num_generations >= 2, "num_generations must be at least 2 (advantages compare siblings)")
        require(self.batch_size % self.num_generations == 0,
                f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations}): "
                f"each batch holds batch_size / num_generations prompts with num_generations responses each")


@dataclass
class GRPOConfig(GroupConfig):
    output_dir: str = "runs/grpo"
    """run folder: config.yaml, metrics.jsonl, checkpoints/, final/"""
    scale_by_std: bool = True
    """divide the group-centred reward by the group's std (False with loss_aggregation=seq_sum_norm: Dr. GRPO)"""
    loss_aggregation: LossAggregation = "seq_mean_token_mean"
    """seq_mean_token_mean (the GRPO paper's 1/|o_i|), token_mean (DAPO) or seq_sum_norm (Dr. GRPO: token
    sums over the constant sampling.max_new_tokens, no per-response length normalisation)"""

    @property
    def is_dr_grpo(self) -> bool:
        """Dr. GRPO (Liu et al. 2025) removes both biases of GRPO: the std scaling of the advantage
        and the per-response 1/|o_i| length normalisation. Only then is the name right."""
        return not self.scale_by_std and self.loss_aggregation == "seq_sum_norm"


# ---------------------------------------------------------------- advantages


def sequence_scores(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, kl_coef: float,
                    kl_in: str) -> torch.Tensor:
    """The reward the advantages are built from: the score, minus kl_coef · Σ_t KL_t when the KL
    goes in the reward (Ahmadian et al. 2024 §3). Shapes: scores (B,), kl and mask (B, R) → (B,)."""
    if kl_in == "reward":
        return scores - kl_coef * (kl * mask).sum(1)
    return scores


def sequence_advantages(config: GRPOConfig, rewards: torch.Tensor) -> torch.Tensor:
    """(B,) group-contiguous rewards → (B,) group-normalised advantages (r − mean) / std per group
    (centred only with ``scale_by_std=False``: Dr. GRPO)."""
    return group_advantages(rewards, group_size=config.num_generations, scale_by_std=config.scale_by_std)


def kl_of(exp: Experience, config: GroupConfig) -> torch.Tensor | None:
    """Per-token KL(π ‖ π_ref) of the rollout (B, R): k3 when it goes in the loss, else the chosen
    estimator; None when either side was not computed (yet)."""
    if exp.logprobs is None or exp.ref_logprobs is None:
        return None
    estimator = "k3" if config.kl_in == "loss" else config.kl_estimator
    return kl_estimate(exp.logprobs, exp.ref_logprobs, estimator=estimator) * exp.mask


# ---------------------------------------------------------------- loss


def clipped_loss(out: Outputs, exp: Experience, idx: torch.Tensor, advantages: torch.Tensor,
                 config: GroupConfig) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate of rows ``idx`` with each response's advantage on every token, plus
    kl_coef · k3 KL to the reference when ``kl_in=loss`` (Shao et al. 2024 eq. 3–4). Without old
    log-probs (the old-policy pass skipped) they are this forward's own, detached: ratio 1, and the
    gradient A·∇log π, as with a recomputed copy of the same numbers."""
    kl_loss_coef = config.kl_coef if config.kl_in == "loss" else 0.0  # 0: no reference in the loss
    ref = exp.ref_logprobs[idx] if kl_loss_coef else None
    old = exp.logprobs[idx] if exp.logprobs is not None else out.logprobs.detach()
    result = grpo_policy_loss(out.logprobs, old, advantages[idx], exp.mask[idx],
                              cliprange=config.cliprange, kl_coef=kl_loss_coef, ref_logprobs=ref, **config.aggregation)
    stats = {("policy/kl_k3" if k == "kl" else k): v for k, v in result.stats.items()}
    return result.losses.mean(), stats


# ---------------------------------------------------------------- the loop


def run_grpo(config: GRPOConfig, *, resume: bool = False, reward_fns: Sequence[Callable] = (),
             gold_fn: Callable | None = None) -> Path:
    """Train with GRPO; returns ``output_dir/final``. ``reward_fns`` are extra Python rewards given in
    code; ``gold_fn(prompts, responses)`` is logged as gold/reward only."""
    return run_group(config, "grpo", sequence_advantages, resume=resume, reward_fns=reward_fns, gold_fn=gold_fn)


def run_group(config: GroupConfig, name: str, advantages_fn: Callable[[GroupConfig, torch.Tensor], torch.Tensor],
              *, resume: bool, reward_fns: Sequence[Callable], gold_fn: Callable | None) -> Path:
    """The loop of GRPO and RLOO: they differ in ``advantages_fn(config, rewards) -> advantages`` and
    in their defaults (kl_in, loss_aggregation)."""
    setup = set_up(config, reward_fns=reward_fns, gold_fn=gold_fn)
    policy, n = setup.policy, config.num_generations
    enable_gradient_checkpointing(policy, config.gradient_checkpointing)
    optimizer, scheduler = optimizer_and_schedule(policy.parameters(), config.optim, total_steps=config.optimizer_steps)
    # several processes: the policy goes through accelerate (DDP / FSDP); one process: as it was
    accelerator = wrapped = None
    if process_count() > 1:
        accelerator = make_accelerator(config.precision)
        distributed.check_accumulation(accelerator, config.gradient_accumulation_steps)
        distributed.require_replicated(accelerator, name)
        wrapped, optimizer = distributed.prepare_model(accelerator, policy, optimizer)
    modules = {"policy": policy, "optimizer": optimizer, "scheduler": scheduler}
    run = RLRun(config, name, modules, setup, prompts_per_step=config.batch_size // n, resume=resume)
    seeded = config.rollout_seed_per_chunk or accelerator is not None

    while not run.done:
        batch_prompts, batch_ids = run.next_prompts(setup.prompts, setup.prompt_ids, repeat=n)
        # 1. generate n responses per prompt (this rank's prompts), 2. score them, 3. old-policy and
        #    reference log-probs (each only when needed: see GroupConfig.old_logprobs_from_update, log_kl)
        first_row, step = run.rank * config.batch_size, run.state.step
        reuse = config.old_logprobs_from_update
        exp = collect(setup.actor, setup.reference, setup.generator, setup.tokenizer, setup.reward, batch_prompts,
                      batch_ids, config, gold_fn=setup.gold_fn,
                      seed_of=(lambda row: chunk_seed(config.seed, step, first_row + row)) if seeded else None,
                      old_logprobs=not reuse, with_reference=config.needs_reference)
        mask = exp.mask

        # 4. group advantages from the (KL-penalised when kl_in=reward) sequence rewards; groups stay on
        #    one rank, the whitening's mean and std are over all ranks
        kl = kl_of(exp, config)  # (B, R); None until the update when the old-policy pass was skipped
        rewards = exp.scores if kl is None else sequence_scores(exp.scores, kl, mask, kl_coef=config.kl_coef,
                                                                 kl_in=config.kl_in)
        advantages = advantages_fn(config, rewards)  # (B,)
        if config.whiten_advantages:
            advantages = distributed.global_whiten(advantages, accelerator)
        advantages = tis_advantages(advantages, exp.tis_weights)  # rollout.tis_cap: (B, R), TIS (Yao et al. 2025)

        # 5. epochs over shuffled minibatches of the clipped surrogate (+ k3 KL when kl_in=loss); when the
        #    old-policy pass was skipped, the update's forward gives the old log-probs and the entropy
        seen = {"logprobs": torch.zeros_like(mask), "entropy": torch.zeros_like(mask)}

        def record(idx, out):
            seen["logprobs"][idx], seen["entropy"][idx] = out.logprobs.detach(), out.entropy

        update = optimise(setup.actor, exp, config, optimizer, scheduler, run.shuffle,
                          lambda out, idx: clipped_loss(out, exp, idx, advantages, config), values=False,
                          accelerator=accelerator, wrapped=wrapped, on_forward=record if reuse else None)
        if reuse:
            complete_experience(exp, seen["logprobs"], seen["entropy"])
            kl = kl_of(exp, config)
        metrics = objective_metrics(exp, kl, kl_coef=config.kl_coef)
        groups = exp.scores.view(-1, n)
        metrics["objective/group_std"] = float(groups.std(1).mean())
        metrics["objective/zero_std_fraction"] = float((groups.std(1) == 0).float().mean())
        metrics.update(update)

        # 6. log (means over ranks: each holds batch_size responses) and checkpoint
        run.end_step(distributed.reduce_stats(accelerator, metrics),
                     show=("objective/scores", "gold/reward", "objective/kl"))
    run.close()
    return distributed.save_final(accelerator, policy, setup.tokenizer, setup.out_dir / "final",
                                  save_adapter_only=config.lora.save_adapter_only)
