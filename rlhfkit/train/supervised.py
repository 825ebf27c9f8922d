"""The supervised-style stages: their shared config fields and the one optimisation loop.

SFT, pre-training, reward models and the direct preference methods (DPO family, ORPO, SimPO, KTO)
differ only in how a batch becomes a loss (``step_fn``) and how a micro-batch is weighted in
gradient accumulation (tokens for SFT, examples for pairwise losses). :func:`train_loop` owns the
rest, once: accelerate, gradient accumulation and clipping, the schedule, logging, periodic
evaluation, checkpoints and an exact ``--resume`` (through :class:`rlhfkit.train.run.Run`), with one
process or N (``accelerate launch`` / ``torchrun``: each rank trains on its shard of every global
batch, weights normalised by the step's weight over all ranks; :mod:`rlhfkit.train.distributed`).

Also here: :class:`SupervisedConfig` (the data, length and step fields these stages add to
:class:`~rlhfkit.train.run.RunConfig`) and :func:`held_out_indices` (the held-out split they share).
Not here: what a batch is for each stage (:mod:`rlhfkit.train.sft`, :mod:`rlhfkit.train.reward_model`,
:mod:`rlhfkit.train.direct`), the online RL loops (:mod:`rlhfkit.train.rl`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rlhfkit.config import require
from rlhfkit.train import distributed
from rlhfkit.train.run import LoopState, Run, RunConfig, infinite_batches


@dataclass
class SupervisedConfig(RunConfig):
    """Fields every supervised-style stage adds to :class:`~rlhfkit.train.run.RunConfig`."""

    data: str = ""
    """training records: JSONL file or HF dataset"""
    eval_data: str | None = None
    """held-out records; if unset, ``eval_fraction`` of ``data`` is held out"""
    eval_fraction: float = 0.05
    """fraction of ``data`` held out for evaluation when ``eval_data`` is unset"""
    max_length: int = 512
    """longest example in tokens (prompt + completion); see the truncation policy in data/tokenize.py"""
    max_prompt_length: int | None = None
    """prompts longer than this are cut from the left first (default: max_length - 1)"""
    batch_size: int = 8
    """examples per micro-batch and process (with N processes a micro-batch holds N × batch_size)"""
    gradient_accumulation_steps: int = 1
    """micro-batches per optimiser step"""
    max_steps: int = 0
    """optimiser steps; 0 means ``num_epochs`` passes over the data"""
    num_epochs: float = 1.0
    """passes over the data when ``max_steps`` is 0"""
    log_every: int = 10
    """optimiser steps between metric lines"""
    eval_every: int = 0
    """optimiser steps between evaluations (0: only at the end)"""
    shuffle: bool = True
    """draw batches in a random order (seeded); false: the training records in file order, every epoch,
    without length grouping (to match another trainer's order exactly; eval_fraction still holds some out)"""

    def validate(self) -> None:
        require(bool(self.model), "model: set the model folder to start from (model=path)")
        require(bool(self.data), "data: set the training data (data=path.jsonl)")
        require(self.batch_size > 0, "batch_size must be positive")
        require(self.gradient_accumulation_steps > 0, "gradient_accumulation_steps must be positive")
        self.optim.validate()
        require(self.max_steps >= 0, "max_steps must be >= 0")
        require(0.0 <= self.eval_fraction < 1.0, "eval_fraction must lie in [0, 1)")
        require(self.max_length > 1, "max_length must exceed 1")
        require(self.max_prompt_length is None or 0 < self.max_prompt_length < self.max_length,
                f"max_prompt_length ({self.max_prompt_length}) must be positive and below max_length "
                f"({self.max_length}): the completion needs room for at least one token")

    def total_steps(self, n_examples: int, *, processes: int = 1) -> int:
        """``max_steps``, or the optimiser steps of ``num_epochs`` passes over ``n_examples`` when
        ``processes`` ranks each take ``batch_size`` examples per micro-batch."""
        if self.max_steps:
            return self.max_steps
        per_epoch = max(1, math.ceil(n_examples / (self.batch_size * processes)) // self.gradient_accumulation_steps)
        return max(1, int(self.num_epochs * per_epoch))


def held_out_indices(n: int, fraction: float, seed: int, *, min_items: int) -> list[int]:
    """The items held out for evaluation: ``max(1, int(n · fraction))`` of ``range(n)`` in a random
    order deterministic in ``seed``; none when ``fraction`` is 0 or there are fewer than ``min_items``
    (too few to spare any). Each stage keeps its own ``min_items`` and the order it needs."""
    if fraction <= 0 or n < min_items:
        return []
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[: max(1, int(n * fraction))]


StepFn = Callable[[Any, list[int]], tuple[torch.Tensor, dict[str, float]]]


def train_loop(config: SupervisedConfig, accelerator, model, optimizer, scheduler, *, name: str,
               out_dir: str | Path, lengths: list[int], step_fn: StepFn, weight_fn: Callable[[list[int]], float],
               eval_fn: Callable[[Any], dict] | None = None, seed: int | None = None, group_by_length: bool = True,
               first_metrics: dict[str, Any] | None = None, resume: bool = False) -> LoopState:
    """Run ``config.total_steps(len(lengths))`` optimiser steps over the examples whose lengths are
    ``lengths`` (batched by :func:`rlhfkit.train.run.infinite_batches`, in ``seed``'s order, by default
    ``config.seed``).

    step_fn(model, indices) -> (mean loss of the micro-batch, stats to log)
    weight_fn(indices) -> weight of the micro-batch in the accumulated gradient
    eval_fn(model) -> metrics, called every ``eval_every`` steps and at the end
    first_metrics: logged at step 0 of a fresh run (data counts, truncation statistics)
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    distributed.check_accumulation(accelerator, config.gradient_accumulation_steps)
    total_steps = config.total_steps(len(lengths), processes=world)
    modules = {"model": distributed.unwrap(accelerator, model), "optimizer": optimizer, "scheduler": scheduler}
    run = Run(out_dir, name, modules, config=config, total_steps=total_steps, resume=resume,
              first_metrics=first_metrics, checkpoints=not distributed.is_sharded(accelerator))
    state = run.state
    # every rank draws the same GLOBAL batches (world × batch_size examples) and trains on its shard
    stream = infinite_batches(lengths, batch_size=config.batch_size * world,
                              seed=config.seed if seed is None else seed,
                              start_epoch=state.epoch, start_batch=state.batch_in_epoch,
                              group_by_length=group_by_length, shuffle=config.shuffle)
    window: dict[str, float] = {}
    window_weight, window_start, window_items = 0.0, time.time(), 0
    model.train()
    while not run.done:
        # 1. accumulate gradients over micro-batches, each weighted by its share of the step: its weight
        #    over the weight of the whole step on ALL ranks, so N ranks × batch b = 1 process × batch N·b
        micro = [next(stream) for _ in range(config.gradient_accumulation_steps)]
        local = [distributed.shard(idx, rank, world) for _, _, idx in micro]
        weights = [weight_fn(idx) if idx else 0.0 for idx in local]
        total_weight = max(sum(distributed.global_sums(accelerator, weights)), 1e-12)
        for k, (idx, weight) in enumerate(zip(local, weights)):
            if not idx:  # fewer examples than ranks: a zero-weight pass keeps DDP's all-reduce in step
                idx = micro[k][2][:1]
            last = k == len(local) - 1
            # DDP all-reduces gradients on the last micro-batch only (accelerate's no_sync)
            with contextlib.nullcontext() if last or world == 1 else accelerator.no_sync(model):
                with accelerator.autocast():
                    loss, stats = distributed.call(model, step_fn, idx)
                # DDP averages the ranks' gradients; × world turns that mean back into the global sum
                scale = weight / total_weight if world == 1 else weight / total_weight * world
                accelerator.backward(loss * scale)
            window["loss"] = window.get("loss", 0.0) + float(loss.detach()) * weight
            for key, value in stats.items():
                window[key] = window.get(key, 0.0) + float(value) * weight
            window_weight += weight
            window_items += len(local[k])
        # 2. clip, step, schedule
        grad_norm = None
        if config.optim.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        epoch, batch_index, _ = micro[-1]
        state.step += 1
        state.epoch, state.batch_in_epoch = epoch, batch_index + 1
        state.tokens_seen += int(total_weight)
        # 3. log (sums and weights over all ranks), evaluate, checkpoint
        if state.step % config.log_every == 0 or run.done:
            elapsed = max(time.time() - window_start, 1e-9)
            keys = sorted(window)
            *sums, window_weight, window_items = distributed.global_sums(
                accelerator, [window[k] for k in keys] + [window_weight, window_items])
            window = dict(zip(keys, sums))
            metrics = {f"train/{k}": v / max(window_weight, 1e-12) for k, v in window.items()}
            metrics.update({"train/lr": scheduler.get_last_lr()[0], "train/epoch": state.epoch,
                            "train/examples_per_s": window_items / elapsed})
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            run.logger.log(state.step, metrics)
            run.progress.update(state.step, {"loss": metrics["train/loss"]})
            window, window_weight, window_start, window_items = {}, 0.0, time.time(), 0
        if eval_fn is not None and ((config.eval_every and state.step % config.eval_every == 0) or run.done):
            model.eval()
            with torch.no_grad():  # every rank evaluates the whole held-out set (the same numbers)
                run.logger.log(state.step, distributed.call(model, eval_fn))
            model.train()
        run.checkpoint_if_due()
    run.close()
    return state
