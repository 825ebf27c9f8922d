"""GRPO and RLOO: online RL without a value model, from several samples per prompt.

Both draw ``num_generations`` (n) responses for each of ``batch_size / n`` prompts and compare each
response with its siblings:
- GRPO (Shao et al. 2024, "DeepSeekMath", §4.1): advantage (r − mean_group) / std_group on every
  token, clipped ratio, and KL(π‖π_ref) as k3 in the loss (eq. 3–4);
- RLOO (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019): advantage r − mean of the
  other n−1 rewards, the KL as a sequence-level penalty in the reward (r − β·Σ_t KL_t).
Either may put the KL in the loss or in the reward (``kl_in``). The rollout, scoring, reference,
logging and checkpoints are those of PPO (:mod:`rlhfkit.train.rl.rollout`).

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
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, save_model
from rlhfkit.ops import LossAggregation, group_advantages, kl_estimate, rloo_advantages
from rlhfkit.train.rl.reward_sources import PythonRewardSource, build_reward_source
from rlhfkit.rollout.hf import HFGenerator
from rlhfkit.train import run as common
from rlhfkit.train.rl.rollout import (ActorCritic, Reference, RLConfig, RunState, collect, load_prompts,
                                     objective_metrics, optimise)


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

    def validate(self, *, extra_rewards: int = 0) -> None:
        self.validate_common(extra_rewards=extra_rewards)
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


@dataclass
class RLOOConfig(GroupConfig):
    output_dir: str = "runs/rloo"
    """run folder: config.yaml, metrics.jsonl, checkpoints/, final/"""
    kl_in: Literal["loss", "reward"] = "reward"
    """where the KL penalty goes: Σ_t KL_t subtracted from the reward (RLOO) or per-token k3 in the loss"""
    loss_aggregation: LossAggregation = "seq_sum_norm"
    """seq_sum_norm by default: RLOO treats the whole response as one action (Ahmadian et al. 2024 §3),
    so its gradient is A·∇log π(y|x) = A·Σ_t ∇log π(y_t|…), a token sum (over a constant, max_new_tokens)"""


def sequence_scores(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, kl_coef: float,
                    kl_in: str) -> torch.Tensor:
    """The reward the advantages are built from: the score, minus kl_coef · Σ_t KL_t when the KL
    goes in the reward (Ahmadian et al. 2024 §3). Shapes: scores (B,), kl and mask (B, R) → (B,)."""
    if kl_in == "reward":
        return scores - kl_coef * (kl * mask).sum(1)
    return scores


def advantages_for(config: GroupConfig, rewards: torch.Tensor) -> torch.Tensor:
    """(B,) group-contiguous rewards → (B,) advantages: group-normalised (GRPO) or leave-one-out (RLOO)."""
    n = config.num_generations
    if isinstance(config, RLOOConfig):
        adv = rloo_advantages(rewards, group_size=n)
    else:
        adv = group_advantages(rewards, group_size=n, scale_by_std=getattr(config, "scale_by_std", True))
    if config.whiten_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


def run_grpo(config: GRPOConfig, *, resume: bool = False, reward_fns: Sequence[Callable] = (),
             gold_fn: Callable | None = None) -> Path:
    """Train with GRPO; returns ``output_dir/final``."""
    return _run(config, "grpo", resume=resume, reward_fns=reward_fns, gold_fn=gold_fn)


def run_rloo(config: RLOOConfig, *, resume: bool = False, reward_fns: Sequence[Callable] = (),
             gold_fn: Callable | None = None) -> Path:
    """Train with RLOO; returns ``output_dir/final``."""
    return _run(config, "rloo", resume=resume, reward_fns=reward_fns, gold_fn=gold_fn)


def _run(config: GroupConfig, name: str, *, resume: bool, reward_fns: Sequence[Callable],
         gold_fn: Callable | None) -> Path:
    config.validate(extra_rewards=len(reward_fns))
    out_dir = common.start_run(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tokenizer = load_tokenizer(config.model)
    prompts, prompt_ids, n_cut = load_prompts(config.prompts, tokenizer, max_prompt_length=config.max_prompt_length)
    policy = load_causal_lm(config.model, lora=config.lora).to(device)
    actor = ActorCritic(policy, disable_dropout=config.disable_dropout)
    reference = Reference(policy, config.model)
    reward = build_reward_source(config.reward, extra=reward_fns, device=device)
    if gold_fn is None and config.gold_function:
        gold_fn = PythonRewardSource(config.gold_function).fn
    generator = HFGenerator(policy, tokenizer, config.sampling)
    optimizer, scheduler = common.optimizer_and_schedule(policy.parameters(), config.optim,
                                                         total_steps=config.optimizer_steps)
    modules = {"policy": policy, "optimizer": optimizer, "scheduler": scheduler}
    n = config.num_generations
    run = RunState(config, name, modules, len(prompts), config.batch_size // n, resume=resume)
    if run.state.step == 0:
        run.logger.log(0, {"data/prompts": len(prompts), "data/prompts_truncated": n_cut})
    kl_loss_coef = config.kl_coef if config.kl_in == "loss" else 0.0  # 0: no reference in the loss

    while not run.done:
        batch_prompts, batch_ids = run.next_prompts(prompts, prompt_ids, repeat=n)
        # 1. generate n responses per prompt, 2. score them, 3. old-policy and reference log-probs
        exp = collect(actor, reference, generator, tokenizer, reward, batch_prompts, batch_ids, config,
                      gold_fn=gold_fn)
        mask = exp.mask
        kl_estimator = "k3" if config.kl_in == "loss" else config.kl_estimator
        kl = kl_estimate(exp.logprobs, exp.ref_logprobs, estimator=kl_estimator) * mask  # (B, R)

        # 4. group advantages from the (KL-penalised when kl_in=reward) sequence rewards
        rewards = sequence_scores(exp.scores, kl, mask, kl_coef=config.kl_coef, kl_in=config.kl_in)
        advantages = advantages_for(config, rewards)  # (B,)
        metrics = objective_metrics(exp, kl, kl_coef=config.kl_coef)
        groups = exp.scores.view(-1, n)
        metrics["objective/group_std"] = float(groups.std(1).mean())
        metrics["objective/zero_std_fraction"] = float((groups.std(1) == 0).float().mean())

        # 5. epochs over shuffled minibatches of the clipped surrogate (+ k3 KL when kl_in=loss)
        def loss_fn(out, idx):
            ref = exp.ref_logprobs[idx] if kl_loss_coef else None
            result = grpo_policy_loss(out.logprobs, exp.logprobs[idx], advantages[idx], mask[idx],
                                      cliprange=config.cliprange, kl_coef=kl_loss_coef, ref_logprobs=ref,
                                      **config.aggregation)
            stats = {("policy/kl_k3" if k == "kl" else k): v for k, v in result.stats.items()}
            return result.losses.mean(), stats

        metrics.update(optimise(actor, exp, config, optimizer, scheduler, run.shuffle, loss_fn, values=False))

        # 6. log and checkpoint
        run.end_step(metrics, show=("objective/scores", "gold/reward", "objective/kl"))
    run.close()
    return save_model(policy, tokenizer, out_dir / "final", save_adapter_only=config.lora.save_adapter_only)
