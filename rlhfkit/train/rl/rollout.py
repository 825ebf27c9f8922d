"""What PPO, GRPO and RLOO share: the config fields, the prompts, the policy (+ value function),
the frozen reference, one "experience" step (generate → score → old and reference log-probs),
the objective/* metrics, logging and checkpoints.

Conventions (Huang et al. 2024, "The N+ implementation details of RLHF with PPO"):
- dropout is switched off in every trained model, so the log-probs recomputed in the first PPO
  minibatch equal those of the rollout (ratio exactly 1, approxkl 0);
- the old log-probs are recomputed with the training forward pass (not taken from ``generate``),
  with the logits divided by the sampling temperature, as the reference log-probs are;
- log-probs are computed only on response positions: (B, R), R = the longest response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import require
from rlhfkit.data.records import load_records
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.models.forward import policy_forward, sequence_logprobs, token_values
from rlhfkit.models import loading as models_loading
from rlhfkit.models.loading import LoraSettings, is_peft, load_causal_lm
from rlhfkit.models.precision import Precision
from rlhfkit.ops import LOSS_AGGREGATIONS, LossAggregation, masked_var
from rlhfkit.train.rl.reward_sources import RewardSettings, RewardSource
from rlhfkit.rollout.base import Rollout, SamplingConfig
from rlhfkit.rollout.hf import decode_responses
from rlhfkit.train import run as common
from rlhfkit.train.run import OptimConfig

log = logging.getLogger("rlhfkit")


@dataclass
class RLConfig:
    """Fields every online RL method shares (PPO, GRPO, RLOO)."""

    model: str = ""
    """the SFT policy folder: the policy starts from it and it is the frozen KL reference"""
    prompts: str = ""
    """prompts: JSONL or HF dataset of {"prompt"} records"""
    output_dir: str = "runs/rl"
    """run folder: config.yaml, metrics.jsonl, checkpoints/, final/"""
    reward: RewardSettings = field(default_factory=RewardSettings)
    """reward sources (reward model / ensemble, HTTP endpoint, Python functions) and their weights"""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=64, batch_size=64))
    """rollout sampling: max_new_tokens, temperature (also used by the training forward), top_p, top_k"""
    max_prompt_length: int = 256
    """prompts longer than this many tokens are cut from the left (counted in data/prompts_truncated)"""
    missing_eos_penalty: float = 0.0
    """subtracted from the score of a response that hit max_new_tokens without EOS (Huang et al. 2024)"""
    total_steps: int = 100
    """policy iterations: each generates ``batch_size`` responses and trains on them"""
    batch_size: int = 64
    """responses generated per iteration"""
    num_ppo_epochs: int = 4
    """optimisation passes over each batch of responses"""
    num_minibatches: int = 1
    """optimiser steps per pass: the batch is shuffled and cut into this many minibatches"""
    gradient_accumulation_steps: int = 1
    """micro-batches per minibatch (memory only: the update is the same)"""
    cliprange: float = 0.2
    """PPO ratio clip ε (Schulman et al. 2017)"""
    kl_coef: float = 0.05
    """coefficient β of the KL(policy ‖ reference) penalty"""
    loss_aggregation: LossAggregation = "token_mean"
    """how per-token losses become one: token_mean (every token of the minibatch weighs the same),
    seq_mean_token_mean (mean per response, then over responses: GRPO), seq_sum_norm (token sums over
    the constant sampling.max_new_tokens: Dr. GRPO); see rlhfkit.ops.aggregate_token_losses"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=3e-6, warmup_ratio=0.0,
                                                                   min_lr_ratio=1.0))
    """optimiser; the default schedule is constant (min_lr_ratio = 1)"""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA on the policy (lora.r = 0: full fine-tune); with LoRA the reference is the adapter disabled"""
    disable_dropout: bool = True
    """switch off dropout in the policy, value model and reference (Huang et al. 2024): only then do the
    log-probs of the training forward equal the rollout's (first PPO ratio exactly 1)"""
    precision: Precision = "auto"
    """bf16 autocast for the forward passes, fp32, or auto (bf16 where the hardware runs it natively)"""
    forward_batch_size: int = 64
    """sequences per no-grad forward pass (old, reference log-probs, values)"""
    gold_function: str | None = None
    """optional 'package.module:function' reward logged as gold/reward, never optimised"""
    save_every: int = 50
    """iterations between checkpoints (0: only at the end)"""
    keep_checkpoints: int = 2
    """newest checkpoints kept"""
    seed: int = 0
    """seed of prompt order, sampling and initialisation"""
    tensorboard: bool = False
    """also write TensorBoard event files"""
    progress: bool = True
    """show a progress bar / periodic progress lines"""

    @property
    def optimizer_steps(self) -> int:
        """Optimiser steps of the whole run: every iteration takes ``num_ppo_epochs`` ×
        ``num_minibatches`` of them, so the learning-rate schedule is built over this many."""
        return self.total_steps * self.num_ppo_epochs * self.num_minibatches

    def validate_common(self, *, extra_rewards: int = 0) -> None:
        require(bool(self.model), "model: set the SFT policy folder (model=path)")
        require(bool(self.prompts), "prompts: set the prompt file (prompts=path.jsonl)")
        self.reward.validate(callables=extra_rewards)
        require(self.total_steps > 0 and self.batch_size > 0, "total_steps and batch_size must be positive")
        require(self.num_ppo_epochs > 0, "num_ppo_epochs must be positive")
        require(self.num_minibatches > 0 and self.batch_size % self.num_minibatches == 0,
                f"batch_size ({self.batch_size}) must be divisible by num_minibatches ({self.num_minibatches})")
        mb = self.batch_size // self.num_minibatches
        require(self.gradient_accumulation_steps > 0 and mb % self.gradient_accumulation_steps == 0,
                f"the minibatch ({mb} = batch_size / num_minibatches) must be divisible by "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps})")
        require(self.sampling.temperature > 0, "sampling.temperature must be > 0")
        require(self.sampling.max_new_tokens > 0, "sampling.max_new_tokens must be positive")
        require(self.cliprange > 0, "cliprange must be > 0")
        require(self.kl_coef >= 0, "kl_coef must be >= 0")
        require(self.max_prompt_length > 0, "max_prompt_length must be positive")
        require(self.loss_aggregation in LOSS_AGGREGATIONS,
                f"loss_aggregation must be one of {', '.join(LOSS_AGGREGATIONS)}, got {self.loss_aggregation!r}")

    @property
    def aggregation(self) -> dict:
        """The keyword arguments that tell a policy loss how to aggregate its tokens."""
        return {"loss_aggregation": self.loss_aggregation, "max_length": self.sampling.max_new_tokens}


# ---------------------------------------------------------------- prompts


def load_prompts(path: str, tokenizer, *, max_prompt_length: int) -> tuple[list, list[list[int]], int]:
    """(prompt records' "prompt" fields, their token ids cut from the left, how many were cut)."""
    prompts = [r["prompt"] for r in load_records(path, "prompt")]
    ids, cut = [], 0
    for p in prompts:
        encoded = encode_prompt(tokenizer, p)
        if len(encoded) > max_prompt_length:
            encoded, cut = encoded[-max_prompt_length:], cut + 1
        ids.append(encoded)
    return prompts, ids, cut


# ---------------------------------------------------------------- policy, value function, reference


@dataclass
class Outputs:
    logprobs: torch.Tensor  # (B, R) 0 on padding
    entropy: torch.Tensor | None  # (B, R)
    values: torch.Tensor | None  # (B, R) value of the state before each response token


class ActorCritic:
    """The modules that are trained: the policy and optionally a value function, either a separate
    critic (initialised from a reward model, Ouyang et al. 2022 §3.5) or a linear value head on the
    policy's last hidden state (one shared backbone, as in Ziegler et al. 2019's head variant)."""

    def __init__(self, policy, *, critic=None, value_head: torch.nn.Linear | None = None,
                 disable_dropout: bool = True):
        if critic is not None and value_head is not None:
            raise ValueError("ActorCritic takes a critic or a value head, not both")
        self.policy, self.critic, self.value_head = policy, critic, value_head
        if disable_dropout:
            for module in self.modules().values():
                models_loading.disable_dropout(module)

    def modules(self) -> dict[str, torch.nn.Module]:
        found = {"policy": self.policy, "critic": self.critic, "value_head": self.value_head}
        return {k: m for k, m in found.items() if m is not None}

    @property
    def has_values(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        for module in self.modules().values():
            module.train(mode)

    def forward(self, input_ids, attention_mask, completion_mask, context_length: int, *, temperature: float,
                entropy: bool = False, values: bool = True) -> Outputs:
        """Response-position log-probs (and entropy, values). Inputs (B, L) with L = P + R."""
        P = context_length
        use_head = self.value_head is not None and values
        out = policy_forward(self.policy, input_ids, attention_mask, completion_mask, temperature=temperature,
                             entropy=entropy, hidden=use_head)
        head_values = None
        if use_head:
            head_values = self.value_head(out.hidden)[..., 0].float()[:, P - 1:-1]  # (B, R)
        if self.critic is not None and values:
            head_values = token_values(self.critic, input_ids, attention_mask)[:, P - 1:-1]  # (B, R)
        ent = None if out.entropy is None else out.entropy[:, P - 1:]
        return Outputs(logprobs=out.logprobs[:, P - 1:], entropy=ent, values=head_values)


class Reference:
    """The frozen SFT policy. With LoRA it is the policy with its adapter disabled (no second copy
    of the weights); otherwise a frozen copy loaded from the same folder."""

    def __init__(self, policy, model_path: str):
        self.model = None
        if not is_peft(policy):
            self.model = load_causal_lm(model_path).to(next(policy.parameters()).device)
            self.model.requires_grad_(False).eval()
            models_loading.disable_dropout(self.model)

    @torch.no_grad()
    def logprobs(self, policy, input_ids, attention_mask, completion_mask, context_length: int, *,
                 temperature: float) -> torch.Tensor:
        """(B, R) reference log-probs of the response tokens."""
        if self.model is not None:
            out = sequence_logprobs(self.model, input_ids, attention_mask, completion_mask, temperature=temperature)
        else:
            with policy.disable_adapter():
                out = sequence_logprobs(policy, input_ids, attention_mask, completion_mask, temperature=temperature)
        return out[:, context_length - 1:]


# ---------------------------------------------------------------- one experience step


@dataclass
class Experience:
    """Everything step 5 (the optimisation) needs, for one batch of B responses. (B, R) tensors."""

    prompts: list
    responses: list[str]
    input_ids: torch.Tensor  # (B, L) left-padded prompt + right-padded response
    attention_mask: torch.Tensor  # (B, L)
    completion_mask: torch.Tensor  # (B, L)
    context_length: int  # P
    mask: torch.Tensor  # (B, R) float, 1 on response tokens up to and including EOS
    has_eos: torch.Tensor  # (B,) bool
    scores: torch.Tensor  # (B,) reward after the missing-EOS penalty
    logprobs: torch.Tensor  # (B, R) policy at rollout time (training forward)
    ref_logprobs: torch.Tensor  # (B, R)
    entropy: torch.Tensor  # (B, R)
    values: torch.Tensor | None  # (B, R)
    gold: torch.Tensor | None  # (B,)
    stats: dict[str, float]
    timings: dict[str, float]

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model inputs of a subset of rows."""
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "completion_mask": self.completion_mask[index]}


def _chunks(n: int, size: int) -> list[torch.Tensor]:
    return [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]


@torch.no_grad()
def collect(actor: ActorCritic, reference: Reference, generator, tokenizer, reward: RewardSource,
            prompts: list, prompt_ids: list[list[int]], config: RLConfig, *,
            gold_fn: Callable | None = None) -> Experience:
    """Steps 1–3 of every online method: generate, score (+ missing-EOS penalty), old-policy and
    reference log-probs and values — all without gradients."""
    device = next(actor.policy.parameters()).device
    timings: dict[str, float] = {}
    # 1. generate (KV cache, left-padded prompts, stop at EOS, cut after the first EOS)
    t = time.time()
    rollout: Rollout = generator.generate(prompt_ids)
    responses = decode_responses(tokenizer, rollout)
    timings["time/generate"] = time.time() - t
    # 2. score the texts; a response that never emitted EOS is penalised
    t = time.time()
    scores = reward.score(prompts, responses).float()
    scores = scores - config.missing_eos_penalty * (~rollout.has_eos).float()
    stats = dict(reward.last_stats)
    gold = None
    if gold_fn is not None:
        gold = torch.as_tensor([float(g) for g in gold_fn(prompts, responses)])
    timings["time/score"] = time.time() - t
    # 3. old-policy and reference log-probs (and values) on response positions
    t = time.time()
    ids, attn, comp = (x.to(device) for x in (rollout.input_ids, rollout.attention_mask, rollout.completion_mask))
    P, B = rollout.prompt_ids.shape[1], ids.shape[0]
    parts: dict[str, list] = {"logprobs": [], "entropy": [], "values": [], "ref": []}
    actor.train(False)
    for idx in _chunks(B, config.forward_batch_size):
        with common.autocast(config.precision):
            out = actor.forward(ids[idx], attn[idx], comp[idx], P, temperature=config.sampling.temperature,
                                entropy=True)
            ref = reference.logprobs(actor.policy, ids[idx], attn[idx], comp[idx], P,
                                     temperature=config.sampling.temperature)
        parts["logprobs"].append(out.logprobs)
        parts["entropy"].append(out.entropy)
        parts["ref"].append(ref)
        if out.values is not None:
            parts["values"].append(out.values)
    timings["time/reference"] = time.time() - t
    mask = rollout.response_mask.to(device).float()
    return Experience(
        prompts=list(prompts), responses=responses, input_ids=ids, attention_mask=attn, completion_mask=comp,
        context_length=P, mask=mask, has_eos=rollout.has_eos.to(device), scores=scores.to(device),
        logprobs=torch.cat(parts["logprobs"]) * mask, ref_logprobs=torch.cat(parts["ref"]) * mask,
        entropy=torch.cat(parts["entropy"]) * mask,
        values=torch.cat(parts["values"]) * mask if parts["values"] else None,
        gold=gold, stats=stats, timings=timings,
    )


# ---------------------------------------------------------------- metrics


def objective_metrics(exp: Experience, kl: torch.Tensor, *, kl_coef: float) -> dict[str, float]:
    """The objective/* metrics (names as in TRL / "N implementation details"): per-sequence sums of
    the per-token KL ``kl`` (B, R) and entropy, scores, the KL-penalised RLHF reward, lengths, EOS."""
    seq_kl = (kl * exp.mask).sum(1)  # (B,)
    lengths = exp.mask.sum(1)
    metrics = {
        "objective/kl": float(seq_kl.mean()),
        "objective/entropy": float((exp.entropy * exp.mask).sum(1).mean()),
        "objective/scores": float(exp.scores.mean()),
        "objective/non_score_reward": float(-kl_coef * seq_kl.mean()),
        "objective/rlhf_reward": float((exp.scores - kl_coef * seq_kl).mean()),
        "objective/kl_coef": float(kl_coef),
        "response/length": float(lengths.mean()),
        "response/no_eos_fraction": float((~exp.has_eos).float().mean()),
        **exp.stats,
        **exp.timings,
    }
    if exp.gold is not None:
        metrics["gold/reward"] = float(exp.gold.mean())
    return metrics


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(returns − values) / Var(returns) over unmasked tokens (1: perfect, ≤ 0: useless)."""
    var_returns = masked_var(returns, mask, unbiased=False)
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns.clamp(min=1e-8))


class StatsWindow:
    """Mean of each statistic over the minibatches of one iteration; the first minibatch's policy
    statistics are also kept (``*_first_minibatch``: ratio exactly 1, approxkl 0 there)."""

    FIRST = ("policy/ratio_mean", "policy/approxkl", "policy/clipfrac")

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.first: dict[str, float] = {}

    def add(self, stats: dict[str, float]) -> None:
        """Fold in one minibatch's statistics."""
        if not self.counts:
            self.first = {f"{k}_first_minibatch": float(stats[k]) for k in self.FIRST if k in stats}
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {**{k: s / self.counts[k] for k, s in self.sums.items()}, **self.first}


def minibatches(n: int, config: RLConfig, generator: torch.Generator):
    """``num_ppo_epochs`` shuffled passes over ``n`` rows: yields each minibatch as a list of
    ``gradient_accumulation_steps`` micro-batches of row indices."""
    mb = n // config.num_minibatches
    micro = mb // config.gradient_accumulation_steps
    for _ in range(config.num_ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, mb):
            minibatch = order[start: start + mb]
            yield [minibatch[s: s + micro] for s in range(0, mb, micro)]


def micro_batch_weights(micro_batches: list[torch.Tensor], mask: torch.Tensor, loss_aggregation: str) -> list[float]:
    """Weights that make the sum of the micro-batch losses the minibatch's loss: each micro-batch's
    share of the minibatch's tokens under ``token_mean`` (its loss is a mean over its own tokens),
    else 1 / (number of micro-batches) (their losses are means over equally many responses)."""
    if loss_aggregation != "token_mean":
        return [1.0 / len(micro_batches)] * len(micro_batches)
    tokens = [float(mask[idx].sum()) for idx in micro_batches]
    total = max(sum(tokens), 1.0)
    return [t / total for t in tokens]


def optimise(actor: ActorCritic, exp: Experience, config: RLConfig, optimizer, scheduler, shuffle: torch.Generator,
             loss_fn: Callable, *, values: bool) -> dict[str, float]:
    """Step 5 of every method: ``num_ppo_epochs`` × shuffled minibatches (one optimiser step each) ×
    ``gradient_accumulation_steps`` micro-batches. ``loss_fn(out, idx) -> (loss, stats)`` gets the
    policy's :class:`Outputs` for rows ``idx``. Returns the minibatch-mean statistics (and the first
    minibatch's policy statistics), policy/grad_norm, lr and time/train."""
    t = time.time()
    window = StatsWindow()
    actor.train(True)
    for micro_batches in minibatches(len(exp.responses), config, shuffle):
        acc: dict[str, float] = {}
        for idx, weight in zip(micro_batches, micro_batch_weights(micro_batches, exp.mask, config.loss_aggregation)):
            with common.autocast(config.precision):
                out = actor.forward(**exp.rows(idx), context_length=exp.context_length,
                                    temperature=config.sampling.temperature, values=values)
                loss, stats = loss_fn(out, idx)
            (loss * weight).backward()
            for key, value in {**stats, "loss/total": loss}.items():
                acc[key] = acc.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value) * weight
        if config.optim.max_grad_norm > 0:
            acc["policy/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(actor.parameters(),
                                                                           config.optim.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.add(acc)
    actor.train(False)
    return {**window.means(), "lr": scheduler.get_last_lr()[0], "time/train": time.time() - t}


# ---------------------------------------------------------------- run folder: logging, checkpoints


class RunState:
    """The run folder's logger and progress bar, prompt stream and checkpoints, shared by every
    method: ``--resume`` restores all ``modules`` (state_dict-ables: models, optimizer, scheduler,
    KL controller, running moments), the RNG states and the position in the prompt stream."""

    def __init__(self, config: RLConfig, name: str, modules: dict, n_prompts: int, prompts_per_step: int, *,
                 resume: bool):
        self.config, self.modules, self.out = config, modules, Path(config.output_dir)
        self.state = common.LoopState()
        checkpoint = common.latest_checkpoint(self.out) if resume else None
        if resume and checkpoint is None:
            print(f"--resume: no checkpoint in {self.out}; starting from scratch")
        if checkpoint is not None:
            self.state = common.load_checkpoint(checkpoint, modules=modules)
            print(f"resumed from {checkpoint} at step {self.state.step}")
        self.logger = common.MetricsLogger(self.out, tensorboard=config.tensorboard, resume=checkpoint is not None)
        if checkpoint is not None:
            self.logger.truncate_after(self.state.step)
        self.stream = common.infinite_batches([1] * n_prompts, batch_size=prompts_per_step, seed=config.seed,
                                              start_epoch=self.state.epoch, start_batch=self.state.batch_in_epoch,
                                              group_by_length=False)
        self.progress = common.Progress(config.total_steps, name, start=self.state.step, enabled=config.progress)
        self.extra: dict = dict(self.state.extra or {})
        """method-specific positions saved with every checkpoint (e.g. the PPO-ptx data stream)"""
        self.shuffle = torch.Generator().manual_seed(config.seed + 17)
        if "shuffle" in self.extra:
            self.shuffle.set_state(self.extra["shuffle"])

    @property
    def done(self) -> bool:
        return self.state.step >= self.config.total_steps

    def next_prompts(self, prompts: list, prompt_ids: list[list[int]], repeat: int = 1) -> tuple[list, list]:
        """The next prompts of the stream, each repeated ``repeat`` times (group-contiguous)."""
        epoch, batch_index, idx = next(self.stream)
        self.state.epoch, self.state.batch_in_epoch = epoch, batch_index + 1
        idx = [i for i in idx for _ in range(repeat)]
        return [prompts[i] for i in idx], [prompt_ids[i] for i in idx]

    def end_step(self, metrics: dict[str, float], show: Sequence[str]) -> None:
        """Log this iteration's metrics and checkpoint when due."""
        self.state.step += 1
        self.logger.log(self.state.step, metrics)
        self.progress.update(self.state.step, {k.replace("objective/", "").replace("/", "_"): metrics[k]
                                              for k in show if k in metrics})
        every = self.config.save_every
        if (every and self.state.step % every == 0) or self.done:
            self.state.extra = {**self.extra, "shuffle": self.shuffle.get_state()}
            common.save_checkpoint(self.out, state=self.state, modules=self.modules,
                                   keep=self.config.keep_checkpoints)

    def close(self) -> None:
        self.progress.close()
        self.logger.close()
