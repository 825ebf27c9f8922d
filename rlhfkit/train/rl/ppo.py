"""PPO against a reward with a per-token KL penalty (stage 3 of RLHF).

Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences"), Stiennon et al. 2020
("Learning to summarize from human feedback"), Ouyang et al. 2022 (InstructGPT), with the details
of Huang et al. 2024 ("The N+ Implementation Details of RLHF with PPO"). One iteration:

1. generate ``batch_size`` responses (KV cache, left-padded prompts, cut after the first EOS)
2. score them (reward model / ensemble mean − λ·std / HTTP / Python); penalise a missing EOS;
   optionally normalise scores with running statistics and clip them
3. old and reference log-probs (no grad); per-token reward −kl_coef·KL_t, the score added at
   the last response token
4. values, GAE(γ, λ), whitened advantages
5. PPO epochs × minibatches × gradient accumulation: clipped policy loss + vf_coef · clipped value
   loss (+ ptx_coef · LM loss on SFT data, PPO-ptx). Every token is an action (GAE gives each its
   own advantage), so by default the loss is the mean over all tokens of the minibatch
   (``loss_aggregation=token_mean``, as in Huang et al. 2024 and TRL), not a mean of per-response means
6. update the KL controller; log objective/*, policy/*, val/*, response/*, time/*

This file reads top to bottom: the config, the value function and optimiser, rewards and
advantages, the loss, the loop. What GRPO and RLOO share with it lives in :mod:`.run` (config
base, set-up, run folder), :mod:`.rollout` (steps 1–3a), :mod:`.update` (step 5's minibatch loop)
and :mod:`.policy`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import require
from rlhfkit.data.records import load_records
from rlhfkit.data.tokenize import collate_sft, encode_sft_records
from rlhfkit.losses import ppo_policy_loss, ppo_value_loss
from rlhfkit.models.forward import causal_lm_loss
from rlhfkit.models.reward_model import load_reward_model, member_dirs
from rlhfkit.ops import (AdaptiveKLController, FixedKLController, RunningMoments, gae, kl_estimate,
                         last_token_index, masked_var)
from rlhfkit.train import distributed
from rlhfkit.train.rl.offpolicy import tis_advantages
from rlhfkit.train.rl.policy import ActorCritic, Outputs
from rlhfkit.train.rl.rollout import Experience, chunk_seed, collect, objective_metrics
from rlhfkit.train.rl.run import RLConfig, RLRun, set_up
from rlhfkit.train.rl.update import optimise
from rlhfkit.train.run import (enable_gradient_checkpointing, infinite_batches, make_accelerator, process_count,
                               process_index)
from rlhfkit.train.optim import optimizer_and_schedule


@dataclass
class PPOConfig(RLConfig):
    output_dir: str = "runs/ppo"
    """run folder: config.yaml, metrics.jsonl, checkpoints/, final/"""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """per-token KL estimator in the reward (Schulman 2020): k1 = log p − log q (Ziegler et al. 2019)"""
    target_kl: float | None = None
    """if set, adapt kl_coef towards this KL per sequence (Ziegler et al. 2019 §2.2)"""
    kl_horizon: int = 10000
    """horizon of the adaptive KL controller, in responses"""
    value_model: str = "reward"
    """value function: 'reward' (a critic initialised from reward.model, Ouyang et al. 2022), 'head' (a
    linear head on the policy) or a reward-model folder"""
    value_learning_rate: float | None = None
    """learning rate of the value function (default: optim.learning_rate)"""
    vf_coef: float = 0.1
    """weight of the value loss"""
    cliprange_value: float = 0.2
    """clip range of the value loss around the old values"""
    gamma: float = 1.0
    """GAE discount γ"""
    lam: float = 0.95
    """GAE λ"""
    whiten_rewards: bool = False
    """rescale the per-token rewards of each batch to unit variance (mean kept; Huang et al. 2024)"""
    normalize_scores: bool = False
    """normalise scores with running mean / std over all batches so far (Ziegler et al. 2019)"""
    score_clip: float | None = None
    """clip scores (after normalisation) to [−score_clip, score_clip]"""
    whiten_advantages: bool = True
    """whiten advantages over each batch (Huang et al. 2024)"""
    ptx_data: str | None = None
    """PPO-ptx (Ouyang et al. 2022 §3.5): SFT / pre-training records whose LM loss is mixed in"""
    ptx_coef: float = 0.0
    """coefficient of the PPO-ptx language-modelling loss"""
    ptx_batch_size: int = 8
    """SFT examples per micro-batch for the ptx loss"""

    @property
    def needs_reference(self) -> bool:
        """The KL penalty, logging it (``log_kl``), or an adaptive controller (it reads the KL) need the
        reference. (The old-policy pass always runs: it gives the values GAE needs before the update.)"""
        return self.kl_coef > 0 or self.log_kl or self.target_kl is not None

    def validate(self, *, extra_rewards: int = 0) -> None:
        super().validate(extra_rewards=extra_rewards)
        require(self.value_model != "reward" or self.reward.model is not None,
                "value_model=reward needs reward.model (or set value_model=head or a folder)")
        require(self.target_kl is None or self.target_kl > 0, "target_kl must be > 0")
        require(self.kl_horizon > 0, "kl_horizon must be positive")
        require(self.vf_coef >= 0 and self.cliprange_value > 0, "vf_coef must be >= 0 and cliprange_value > 0")
        require(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma and lam must lie in [0, 1]")
        require(self.ptx_coef == 0 or self.ptx_data is not None, "ptx_coef > 0 needs ptx_data")


# ---------------------------------------------------------------- value function, optimiser, KL controller


def build_value(config: PPOConfig, policy) -> tuple[object | None, torch.nn.Linear | None]:
    """(critic, value_head): a critic from the reward model (first member of an ensemble) or a folder,
    or a zero-initialised linear head on the policy's hidden states."""
    if config.value_model == "head":
        head = torch.nn.Linear(policy.config.hidden_size, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return None, head.to(next(policy.parameters()).device)
    path = member_dirs(config.reward.model)[0] if config.value_model == "reward" else Path(config.value_model)
    return load_reward_model(path).to(next(policy.parameters()).device), None


def build_optimizer(config: PPOConfig, actor: ActorCritic):
    value_modules = [m for m in (actor.critic, actor.value_head) if m is not None]
    value_group = ({"params": [p for m in value_modules for p in m.parameters()],
                    "lr": config.value_learning_rate or config.optim.learning_rate, "weight_decay": 0.0},)
    return optimizer_and_schedule(actor.policy.parameters(), config.optim, total_steps=config.optimizer_steps,
                                  extra_groups=value_group if value_modules else ())


def kl_controller(config: PPOConfig):
    if config.target_kl is not None:
        return AdaptiveKLController(config.kl_coef, target=config.target_kl, horizon=config.kl_horizon)
    return FixedKLController(config.kl_coef)


# ---------------------------------------------------------------- rewards and advantages


def token_rewards(exp: Experience, scores: torch.Tensor, kl: torch.Tensor, *, kl_coef: float) -> torch.Tensor:
    """Per-token rewards (Ziegler et al. 2019 eq. 2; Stiennon et al. 2020 eq. 1):
    r_t = −kl_coef · KL_t, plus the sequence's score at its last non-pad response token.
    Shapes: scores (B,), kl (B, R) → (B, R)."""
    rewards = -kl_coef * kl * exp.mask
    last = last_token_index(exp.mask)  # (B,)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(returns − values) / Var(returns) over unmasked tokens (1: perfect, ≤ 0: useless)."""
    var_returns = masked_var(returns, mask, unbiased=False)
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns.clamp(min=1e-8))


# ---------------------------------------------------------------- loss


def ppo_loss(out: Outputs, exp: Experience, idx: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
             config: PPOConfig) -> tuple[torch.Tensor, dict]:
    """The PPO loss of rows ``idx``: clipped policy loss + vf_coef · clipped value loss (Schulman et al.
    2017, with the value clipping of Huang et al. 2024), aggregated as ``config.loss_aggregation`` says."""
    pg = ppo_policy_loss(out.logprobs, exp.logprobs[idx], advantages[idx], exp.mask[idx],
                         cliprange=config.cliprange, **config.aggregation)
    vf = ppo_value_loss(out.values, exp.values[idx], returns[idx], exp.mask[idx],
                        cliprange_value=config.cliprange_value, **config.aggregation)
    loss = pg.losses.mean() + config.vf_coef * vf.losses.mean()
    stats = {**pg.stats, **vf.stats, "loss/policy": pg.losses.mean(), "loss/value": vf.losses.mean()}
    return loss, stats


class PtxStream:
    """Batches of SFT examples for the PPO-ptx loss, resumable (position kept in the checkpoint)."""

    def __init__(self, config: PPOConfig, tokenizer, extra: dict):
        self.examples = encode_sft_records(tokenizer, load_records(config.ptx_data, "sft"),
                                           max_length=config.max_prompt_length + config.sampling.max_new_tokens
                                           ).examples
        self.pad, self.extra = tokenizer.pad_token_id, extra
        epoch, batch = extra.get("ptx", (0, 0))
        # with N processes each rank takes its shard of a global batch of N × ptx_batch_size
        self.rank, self.world = process_index(), process_count()
        self.stream = infinite_batches([len(e["input_ids"]) for e in self.examples],
                                       batch_size=config.ptx_batch_size * self.world,
                                       seed=config.seed + 5, start_epoch=epoch, start_batch=batch)

    def loss(self, model, device) -> torch.Tensor:
        epoch, batch_index, idx = next(self.stream)
        self.extra["ptx"] = (epoch, batch_index + 1)
        idx = distributed.shard(idx, self.rank, self.world) or idx[:1]
        batch = {k: v.to(device) for k, v in collate_sft([self.examples[i] for i in idx], self.pad).items()}
        return causal_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]


# ---------------------------------------------------------------- the loop


def run_ppo(config: PPOConfig, *, resume: bool = False, reward_fns: Sequence[Callable] = (),
            gold_fn: Callable | None = None) -> Path:
    """Train with PPO; returns ``output_dir/final`` (a standard HF folder, LoRA merged unless
    ``lora.save_adapter_only``). ``reward_fns`` are extra Python rewards given in code (weighted
    like ``reward.functions``); ``gold_fn(prompts, responses)`` is logged as gold/reward only."""
    setup = set_up(config, reward_fns=reward_fns, gold_fn=gold_fn, value_function=lambda p: build_value(config, p))
    actor, tokenizer = setup.actor, setup.tokenizer
    enable_gradient_checkpointing(setup.policy, config.gradient_checkpointing)
    optimizer, scheduler = build_optimizer(config, actor)
    # several processes: the policy and the value function go through accelerate together (DDP)
    accelerator = wrapped = None
    if process_count() > 1:
        accelerator = make_accelerator(config.precision)
        distributed.check_accumulation(accelerator, config.gradient_accumulation_steps)
        distributed.require_replicated(accelerator, "ppo")
        wrapped, optimizer = distributed.prepare_model(accelerator, torch.nn.ModuleDict(actor.modules()), optimizer)
    kl_ctl, moments = kl_controller(config), RunningMoments()
    modules = {**actor.modules(), "optimizer": optimizer, "scheduler": scheduler, "kl_ctl": kl_ctl,
               "score_moments": moments}
    run = RLRun(config, "ppo", modules, setup, prompts_per_step=config.batch_size, resume=resume)
    ptx = PtxStream(config, tokenizer, run.extra) if config.ptx_coef > 0 else None

    while not run.done:
        batch_prompts, batch_ids = run.next_prompts(setup.prompts, setup.prompt_ids)
        # 1. generate, 2. score (+ missing-EOS penalty), 3a. old-policy / reference log-probs, values
        first_row, step = run.rank * config.batch_size, run.state.step
        seeded = config.rollout_seed_per_chunk or accelerator is not None
        exp = collect(actor, setup.reference, setup.generator, tokenizer, setup.reward, batch_prompts, batch_ids,
                      config, gold_fn=setup.gold_fn,
                      seed_of=(lambda row: chunk_seed(config.seed, step, first_row + row)) if seeded else None,
                      with_reference=config.needs_reference)
        mask = exp.mask
        scores = exp.scores
        if config.normalize_scores:  # running statistics of every rank's scores
            moments.update(distributed.gather_rows(accelerator, scores))
            scores = (scores - moments.mean) / max(moments.std, 1e-8)
        if config.score_clip is not None:
            scores = scores.clamp(-config.score_clip, config.score_clip)

        # 3b. per-token KL-penalised rewards
        kl = None  # not computed: kl_coef = 0 and log_kl off (PPOConfig.needs_reference)
        if exp.ref_logprobs is not None:
            kl = kl_estimate(exp.logprobs, exp.ref_logprobs, estimator=config.kl_estimator) * mask  # (B, R)
        rewards = token_rewards(exp, scores, torch.zeros_like(mask) if kl is None else kl, kl_coef=kl_ctl.value)
        if config.whiten_rewards:
            rewards = distributed.global_masked_whiten(rewards, mask, accelerator, shift_mean=False)

        # 4. advantages and returns with GAE; whitened advantages
        advantages, returns = gae(rewards, exp.values, mask, gamma=config.gamma, lam=config.lam)
        if config.whiten_advantages:  # the mean and variance of all ranks' tokens
            advantages = distributed.global_masked_whiten(advantages, mask, accelerator)
        advantages = tis_advantages(advantages, exp.tis_weights)  # rollout.tis_cap: TIS (Yao et al. 2025)
        metrics = objective_metrics(exp, kl, kl_coef=kl_ctl.value)
        metrics["val/explained_variance"] = explained_variance(exp.values, returns, mask)

        # 5. PPO epochs over shuffled minibatches: clipped policy loss + vf_coef · clipped value loss
        def loss_fn(out, idx):
            loss, stats = ppo_loss(out, exp, idx, advantages, returns, config)
            if ptx is not None:  # PPO-ptx: the LM loss on SFT / pre-training data, mixed in
                stats["loss/ptx"] = ptx.loss(actor.policy, setup.device)
                loss = loss + config.ptx_coef * stats["loss/ptx"]
            return loss, stats

        metrics.update(optimise(actor, exp, config, optimizer, scheduler, run.shuffle, loss_fn, values=True,
                                accelerator=accelerator, wrapped=wrapped))
        metrics = distributed.reduce_stats(accelerator, metrics)  # means over ranks (equal batches)

        # 6. KL controller (Ziegler et al. 2019 §2.2: n_steps = responses in the batch of all ranks), log, checkpoint
        if "objective/kl" in metrics:  # always, unless kl_coef = 0 without an adaptive controller
            kl_ctl.update(metrics["objective/kl"], len(exp.responses) * process_count())
        run.end_step(metrics, show=("objective/scores", "gold/reward", "objective/kl", "objective/kl_coef"))
    run.close()
    return distributed.save_final(accelerator, setup.policy, tokenizer, setup.out_dir / "final",
                                  save_adapter_only=config.lora.save_adapter_only)
