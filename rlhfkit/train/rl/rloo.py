"""RLOO (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019): online RL without a value model,
each response's baseline the mean reward of its n−1 siblings, the KL by default a sequence-level
penalty in the reward (r − β·Σ_t KL_t) and the whole response one action.

This file holds what RLOO changes: its config defaults and its advantages. The loop (generate n per
prompt, score, KL, advantages, clipped updates) is GRPO's, :func:`rlhfkit.train.rl.grpo.run_group`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.ops import LossAggregation, rloo_advantages
from rlhfkit.train.rl.grpo import GroupConfig, run_group


@dataclass
class RLOOConfig(GroupConfig):
    output_dir: str = "runs/rloo"
    """run folder: config.yaml, metrics.jsonl, checkpoints/, final/"""
    kl_in: Literal["loss", "reward"] = "reward"
    """where the KL penalty goes: Σ_t KL_t subtracted from the reward (RLOO) or per-token k3 in the loss"""
    loss_aggregation: LossAggregation = "seq_sum_norm"
    """seq_sum_norm by default: RLOO treats the whole response as one action (Ahmadian et al. 2024 §3),
    so its gradient is A·∇log π(y|x) = A·Σ_t ∇log π(y_t|…), a token sum (over a constant, max_new_tokens)"""


def sequence_advantages(config: RLOOConfig, rewards: torch.Tensor) -> torch.Tensor:
    """(B,) group-contiguous rewards → (B,) leave-one-out advantages: r_i − mean of the other n−1."""
    return rloo_advantages(rewards, group_size=config.num_generations)


def run_rloo(config: RLOOConfig, *, resume: bool = False, reward_fns: Sequence[Callable] = (),
             gold_fn: Callable | None = None) -> Path:
    """Train with RLOO; returns ``output_dir/final``. ``reward_fns`` are extra Python rewards given in
    code; ``gold_fn(prompts, responses)`` is logged as gold/reward only."""
    return run_group(config, "rloo", sequence_advantages, resume=resume, reward_fns=reward_fns, gold_fn=gold_fn)
