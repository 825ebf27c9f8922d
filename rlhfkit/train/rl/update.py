"""Step 5 of every online method: ``num_ppo_epochs`` passes × shuffled minibatches (one optimiser
step each) × ``gradient_accumulation_steps`` micro-batches of the method's loss, and the statistics
of the update (minibatch means, plus the first minibatch's ratio / approxkl / clipfrac).

Not here: the loss itself (each method's ``loss_fn``, on :mod:`rlhfkit.losses`), the batch sizes'
definitions (:class:`rlhfkit.train.rl.run.RLConfig`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from rlhfkit.train import distributed
from rlhfkit.train.rl.policy import ActorCritic
from rlhfkit.train.rl.rollout import Experience
from rlhfkit.train.rl.run import RLConfig
from rlhfkit.train.run import autocast


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
    mb = n // config.num_minibatches  # the minibatch (RLConfig.minibatch_size when n is the rollout batch)
    micro = mb // config.gradient_accumulation_steps
    for _ in range(config.num_ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, mb):
            minibatch = order[start: start + mb]
            yield [minibatch[s: s + micro] for s in range(0, mb, micro)]


def micro_batch_weights(micro_batches: list[torch.Tensor], mask: torch.Tensor, loss_aggregation: str, *,
                        accelerator=None) -> list[float]:
    """Weights that make the sum of the micro-batch losses the minibatch's loss: each micro-batch's
    share of the minibatch's tokens under ``token_mean`` (its loss is a mean over its own tokens),
    else 1 / (number of micro-batches) (their losses are means over equally many responses).

    With N processes (``accelerator``) the minibatch is every rank's rows: under ``token_mean`` the
    share is of the all-reduced token count, times N because DDP averages the ranks' gradients; the
    other aggregations are already global, since every rank holds equally many responses."""
    if loss_aggregation != "token_mean":
        return [1.0 / len(micro_batches)] * len(micro_batches)
    tokens = [float(mask[idx].sum()) for idx in micro_batches]
    if distributed.is_distributed(accelerator):
        total = max(distributed.global_sums(accelerator, [sum(tokens)])[0], 1.0)
        return [t / total * accelerator.num_processes for t in tokens]
    total = max(sum(tokens), 1.0)
    return [t / total for t in tokens]


def optimise(actor: ActorCritic, exp: Experience, config: RLConfig, optimizer, scheduler, shuffle: torch.Generator,
             loss_fn: Callable, *, values: bool, accelerator=None, wrapped=None,
             on_forward: Callable | None = None) -> dict[str, float]:
    """Step 5 of every method: ``num_ppo_epochs`` × shuffled minibatches (one optimiser step each) ×
    ``gradient_accumulation_steps`` micro-batches. ``loss_fn(out, idx) -> (loss, stats)`` gets the
    policy's :class:`Outputs` for rows ``idx``. Returns the minibatch-mean statistics (and the first
    minibatch's policy statistics), policy/grad_norm, lr and time/train.

    With several processes (``accelerator`` and ``wrapped``, the policy as ``accelerator.prepare``
    wrapped it) each micro-batch's forward runs through the wrapper and DDP all-reduces the gradients
    on the minibatch's last micro-batch only (``no_sync`` before it).

    ``on_forward(idx, out)``, when given, sees every micro-batch's outputs, with the entropy (the loops
    that skipped the old-policy pass read their log-probs and entropy from it)."""
    t = time.time()
    window = StatsWindow()
    actor.train(True)
    for micro_batches in minibatches(len(exp.responses), config, shuffle):
        acc: dict[str, float] = {}
        weights = micro_batch_weights(micro_batches, exp.mask, config.loss_aggregation, accelerator=accelerator)
        for k, (idx, weight) in enumerate(zip(micro_batches, weights)):
            def micro_loss(_policy, idx=idx):  # _policy is actor.policy (through the wrapper when distributed)
                with autocast(config.precision):
                    out = actor.forward(**exp.rows(idx), context_length=exp.context_length,
                                        temperature=config.sampling.temperature, values=values,
                                        entropy=on_forward is not None)
                    if on_forward is not None:
                        on_forward(idx, out)
                    return loss_fn(out, idx)

            if wrapped is None:
                loss, stats = micro_loss(actor.policy)
                (loss * weight).backward()
            else:
                last = k == len(micro_batches) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(wrapped):
                    loss, stats = distributed.call(wrapped, micro_loss)
                    accelerator.backward(loss * weight)
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
