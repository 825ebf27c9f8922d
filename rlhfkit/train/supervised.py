"""The supervised-style optimisation loop shared by SFT, pre-training, reward models and the DPO family.

What differs between them is only how a batch becomes a loss (``step_fn``) and how a micro-batch is
weighted in gradient accumulation (tokens for SFT, examples for pairwise losses). This loop owns the
rest, once: accelerate, gradient accumulation and clipping, the schedule, logging, periodic
evaluation, checkpoints and an exact ``--resume``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from rlhfkit.train import run as common


@dataclass
class LoopSpec:
    name: str
    out_dir: Path
    total_steps: int
    batch_size: int
    lengths: list[int]
    """length of each training example (for length-grouped batches)"""
    seed: int = 0
    gradient_accumulation_steps: int = 1
    group_by_length: bool = True
    max_grad_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    tensorboard: bool = False
    progress: bool = True
    first_metrics: dict[str, Any] = field(default_factory=dict)
    """logged at step 0 of a fresh run (data counts, truncation statistics)"""


StepFn = Callable[[Any, list[int]], tuple[torch.Tensor, dict[str, float]]]


def train_loop(spec: LoopSpec, accelerator, model, optimizer, scheduler, *, step_fn: StepFn,
               weight_fn: Callable[[list[int]], float], eval_fn: Callable[[Any], dict] | None = None,
               resume: bool = False, extra_modules: dict[str, Any] | None = None) -> common.LoopState:
    """Run ``spec.total_steps`` optimiser steps.

    step_fn(model, indices) -> (mean loss of the micro-batch, stats to log)
    weight_fn(indices) -> weight of the micro-batch in the accumulated gradient
    eval_fn(model) -> metrics, called every ``eval_every`` steps and at the end
    """
    modules = {"model": accelerator.unwrap_model(model), "optimizer": optimizer, "scheduler": scheduler,
               **(extra_modules or {})}
    state = common.LoopState()
    checkpoint = common.latest_checkpoint(spec.out_dir) if resume else None
    if resume and checkpoint is None:
        print(f"--resume: no checkpoint in {spec.out_dir}; starting from scratch")
    if checkpoint is not None:
        state = common.load_checkpoint(checkpoint, modules=modules)
        print(f"resumed from {checkpoint} at step {state.step}")
    logger = common.MetricsLogger(spec.out_dir, tensorboard=spec.tensorboard, resume=checkpoint is not None)
    if checkpoint is not None:
        logger.truncate_after(state.step)
    elif spec.first_metrics:
        logger.log(0, spec.first_metrics)

    stream = common.infinite_batches(spec.lengths, batch_size=spec.batch_size, seed=spec.seed,
                                     start_epoch=state.epoch, start_batch=state.batch_in_epoch,
                                     group_by_length=spec.group_by_length)
    progress = common.Progress(spec.total_steps, spec.name, start=state.step, enabled=spec.progress)
    window: dict[str, float] = {}
    window_weight, window_start, window_items = 0.0, time.time(), 0
    model.train()
    while state.step < spec.total_steps:
        # 1. accumulate gradients over micro-batches, each weighted by its share of the step
        micro = [next(stream) for _ in range(spec.gradient_accumulation_steps)]
        weights = [weight_fn(idx) for _, _, idx in micro]
        total_weight = max(sum(weights), 1e-12)
        for (_, _, idx), weight in zip(micro, weights):
            with accelerator.autocast():
                loss, stats = step_fn(model, idx)
            accelerator.backward(loss * (weight / total_weight))
            window["loss"] = window.get("loss", 0.0) + float(loss.detach()) * weight
            for key, value in stats.items():
                window[key] = window.get(key, 0.0) + float(value) * weight
            window_weight += weight
            window_items += len(idx)
        # 2. clip, step, schedule
        grad_norm = None
        if spec.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        epoch, batch_index, _ = micro[-1]
        state.step += 1
        state.epoch, state.batch_in_epoch = epoch, batch_index + 1
        state.tokens_seen += int(sum(weights))
        # 3. log, evaluate, checkpoint
        if state.step % spec.log_every == 0 or state.step == spec.total_steps:
            elapsed = max(time.time() - window_start, 1e-9)
            metrics = {f"train/{k}": v / max(window_weight, 1e-12) for k, v in window.items()}
            metrics.update({"train/lr": scheduler.get_last_lr()[0], "train/epoch": state.epoch,
                            "train/examples_per_s": window_items / elapsed})
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            logger.log(state.step, metrics)
            progress.update(state.step, {"loss": metrics["train/loss"]})
            window, window_weight, window_start, window_items = {}, 0.0, time.time(), 0
        is_last = state.step == spec.total_steps
        if eval_fn is not None and ((spec.eval_every and state.step % spec.eval_every == 0) or is_last):
            model.eval()
            with torch.no_grad():
                logger.log(state.step, eval_fn(model))
            model.train()
        if (spec.save_every and state.step % spec.save_every == 0) or is_last:
            common.save_checkpoint(spec.out_dir, state=state, modules=modules, keep=spec.keep_checkpoints)
    progress.close()
    logger.close()
    return state


def spec_from_config(config, *, name: str, out_dir: Path, total_steps: int, lengths: list[int],
                     seed: int | None = None, group_by_length: bool = True,
                     first_metrics: dict[str, Any] | None = None) -> LoopSpec:
    """A LoopSpec from the shared fields of a :class:`rlhfkit.train.options.TrainConfig`."""
    return LoopSpec(
        name=name, out_dir=Path(out_dir), total_steps=total_steps, batch_size=config.batch_size, lengths=lengths,
        seed=config.seed if seed is None else seed, gradient_accumulation_steps=config.gradient_accumulation_steps,
        group_by_length=group_by_length, max_grad_norm=config.optim.max_grad_norm, log_every=config.log_every,
        eval_every=config.eval_every, save_every=config.save_every, keep_checkpoints=config.keep_checkpoints,
        tensorboard=config.tensorboard, progress=config.progress, first_metrics=dict(first_metrics or {}),
    )
