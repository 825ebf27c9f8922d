"""One experience step of every online method, without gradients: generate → score (+ missing-EOS
penalty) → old-policy and reference log-probs (and values), chunked by ``forward_batch_size``; and
the objective/* metrics of that batch.

Two passes are skipped when nothing needs them (:func:`collect`'s ``old_logprobs`` and ``with_reference``):
- the old-policy pass, when the batch serves exactly one optimiser update (GRPO / RLOO with
  num_ppo_epochs = num_minibatches = 1): the update's own forward runs on the same weights, so its
  detached log-probs ARE the old ones (ratio 1 by construction); :func:`complete_experience` fills
  them in afterwards for the metrics;
- the reference pass, when the KL coefficient is 0 and ``log_kl`` is off: objective/kl is then not
  logged at all (absent, not 0), since it was not computed.

Not here: the models (:mod:`.policy`), where rewards come from (:mod:`.reward_sources`), what a
method makes of the experience (:mod:`.ppo`, :mod:`.grpo`, :mod:`.rloo`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhfkit.rollout.base import Rollout
from rlhfkit.rollout.hf import concat_rollouts, decode_responses
from rlhfkit.train.rl.offpolicy import logprob_gap, tis_weights
from rlhfkit.train.rl.policy import ActorCritic, Reference
from rlhfkit.train.rl.reward_sources import RewardSource
from rlhfkit.train.rl.run import RLConfig
from rlhfkit.train.run import autocast


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
    logprobs: torch.Tensor | None  # (B, R) policy at rollout time (training forward); None until the update
    ref_logprobs: torch.Tensor | None  # (B, R); None when the reference pass was skipped (no KL needed)
    entropy: torch.Tensor | None  # (B, R); None with logprobs
    values: torch.Tensor | None  # (B, R)
    gold: torch.Tensor | None  # (B,)
    stats: dict[str, float]
    timings: dict[str, float]
    sampler_logprobs: torch.Tensor | None = None  # (B, R) the sampler's own log-probs, beside ``logprobs``
    tis_weights: torch.Tensor | None = None  # (B, R) min(π_old / π_sampler, rollout.tis_cap), when on

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model inputs of a subset of rows."""
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "completion_mask": self.completion_mask[index]}


def chunk_seed(seed: int, step: int, row: int) -> int:
    """Sampling seed of the generation chunk that starts at GLOBAL row ``row`` of iteration ``step``:
    with several processes every chunk has its own stream (ranks do not sample the same noise), and
    the samples do not depend on how many processes share the batch (1 process × 2 chunks draws as
    2 processes × 1 chunk each)."""
    return ((seed * 1_000_003 + step) * 1_000_003 + row) % (2**63 - 1)


def generate_seeded(generator, tokenizer, prompt_ids: list[list[int]], *, chunk: int, seed_of) -> Rollout:
    """``generator.generate`` chunk by chunk (``chunk`` prompts each), the torch RNG seeded with
    ``seed_of(first row of the chunk)`` for each and restored afterwards. (A server generator has no local
    model: it seeds each request itself, and the seeding here changes nothing there.)"""
    model = getattr(generator, "model", None)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    parts = []
    for start in range(0, len(prompt_ids), chunk):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed_of(start))
            parts.append(generator.generate(prompt_ids[start: start + chunk]))
    return concat_rollouts(parts, pad_token_id=tokenizer.pad_token_id)


def _chunks(n: int, size: int) -> list[torch.Tensor]:
    return [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]


@torch.no_grad()
def collect(actor: ActorCritic, reference: Reference, generator, tokenizer, reward: RewardSource,
            prompts: list, prompt_ids: list[list[int]], config: RLConfig, *,
            gold_fn: Callable | None = None, seed_of: Callable[[int], int] | None = None,
            old_logprobs: bool = True, with_reference: bool = True) -> Experience:
    """Steps 1–3 of every online method: generate, score (+ missing-EOS penalty), old-policy and
    reference log-probs and values — all without gradients. ``seed_of(row)``, when given, seeds each
    generation chunk by its first row (:func:`generate_seeded`); otherwise the global RNG runs on.

    ``old_logprobs=False`` skips the old-policy pass (exp.logprobs and entropy stay None until
    :func:`complete_experience`; not with a value function, whose values the pass computes);
    ``with_reference=False`` skips the reference pass (exp.ref_logprobs is None)."""
    if not old_logprobs and actor.has_values:
        raise ValueError("collect: the values come from the old-policy pass, which cannot be skipped")
    device = next(actor.policy.parameters()).device
    timings: dict[str, float] = {}
    # 1. generate (KV cache, left-padded prompts, stop at EOS, cut after the first EOS)
    t = time.time()
    if seed_of is None:
        rollout: Rollout = generator.generate(prompt_ids)
    else:
        rollout = generate_seeded(generator, tokenizer, prompt_ids, chunk=config.sampling.batch_size, seed_of=seed_of)
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
        with autocast(config.precision):
            if old_logprobs:
                out = actor.forward(ids[idx], attn[idx], comp[idx], P, temperature=config.sampling.temperature,
                                    entropy=True)
                parts["logprobs"].append(out.logprobs)
                parts["entropy"].append(out.entropy)
                if out.values is not None:
                    parts["values"].append(out.values)
            if with_reference:
                parts["ref"].append(reference.logprobs(actor.policy, ids[idx], attn[idx], comp[idx], P,
                                                       temperature=config.sampling.temperature))
    timings["time/reference"] = time.time() - t
    mask = rollout.response_mask.to(device).float()
    sampler = rollout.logprobs.to(device) * mask
    logprobs = torch.cat(parts["logprobs"]) * mask if old_logprobs else None
    if logprobs is not None:
        stats.update(logprob_gap(sampler, logprobs, mask))  # sampler vs trainer (other engine, stale weights)
    stats.update(getattr(generator, "last_stats", {}))  # a server's weights version, waits, sync time
    if config.rollout.tis_cap and logprobs is None:
        raise ValueError("collect: rollout.tis_cap weighs the loss by the old log-probs; keep the old-policy pass")
    return Experience(
        prompts=list(prompts), responses=responses, input_ids=ids, attention_mask=attn, completion_mask=comp,
        context_length=P, mask=mask, has_eos=rollout.has_eos.to(device), scores=scores.to(device),
        logprobs=logprobs, ref_logprobs=torch.cat(parts["ref"]) * mask if with_reference else None,
        entropy=torch.cat(parts["entropy"]) * mask if old_logprobs else None,
        values=torch.cat(parts["values"]) * mask if parts["values"] else None,
        gold=gold, stats=stats, timings=timings, sampler_logprobs=sampler,
        tis_weights=tis_weights(logprobs, sampler, mask, cap=config.rollout.tis_cap) if config.rollout.tis_cap else None,
    )


def complete_experience(exp: Experience, logprobs: torch.Tensor, entropy: torch.Tensor) -> None:
    """Fill in the old-policy log-probs and entropy that :func:`collect` skipped (``old_logprobs=False``)
    from the update's own forward pass, detached, which ran on the weights of the rollout; and the
    sampler / trainer gap they give. Shapes: (B, R) each."""
    exp.logprobs, exp.entropy = logprobs.detach() * exp.mask, entropy.detach() * exp.mask
    exp.stats.update(logprob_gap(exp.sampler_logprobs, exp.logprobs, exp.mask))


def objective_metrics(exp: Experience, kl: torch.Tensor | None, *, kl_coef: float) -> dict[str, float]:
    """The objective/* metrics (names as in TRL / "N implementation details"): per-sequence sums of
    the per-token KL ``kl`` (B, R) and entropy, scores, the KL-penalised RLHF reward, lengths, EOS.
    ``kl`` None (not computed: kl_coef = 0 and log_kl off): objective/kl is left out, and the penalty
    β·KL is exactly 0."""
    computed = kl is not None
    if kl is None:
        if kl_coef != 0:
            raise ValueError("objective_metrics: the KL is needed when kl_coef is not 0")
        kl = torch.zeros_like(exp.mask)
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
    if not computed:
        del metrics["objective/kl"]
    return metrics
