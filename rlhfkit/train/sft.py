"""Supervised fine-tuning (stage 1 of RLHF, Ouyang et al. 2022 §3.5) and tiny-model pre-training.

One loop serves both: ``rlhfkit sft`` trains on demonstrations with the loss on completion tokens
only; ``rlhfkit pretrain`` trains on packed blocks of raw text with the loss on every token.
Here: their configs, data preparation and loss; the loop itself is :func:`rlhfkit.train.supervised.train_loop`,
the token-level loss :func:`rlhfkit.models.forward.causal_lm_loss`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.data.records import load_records
from rlhfkit.data.tokenize import IGNORE_INDEX, collate_sft, encode_sft_records, pack_documents
from rlhfkit.models.forward import causal_lm_loss
from rlhfkit.models.loading import disable_dropout, load_causal_lm, load_tokenizer
from rlhfkit.train.optim import OptimConfig  # noqa: F401  (re-exported: the configs' optim block)
from rlhfkit.train import distributed
from rlhfkit.train.run import autocast, enable_gradient_checkpointing, make_accelerator, start_run
from rlhfkit.train.optim import optimizer_and_schedule
from rlhfkit.train.supervised import SupervisedConfig, held_out_indices, train_loop

log = logging.getLogger("rlhfkit")


@dataclass
class SFTConfig(SupervisedConfig):
    data: str = ""
    """demonstrations: JSONL or HF dataset of {prompt, completion} or {messages}"""
    output_dir: str = "runs/sft"
    """where config.yaml, metrics.jsonl, checkpoints/ and final/ are written"""
    eval_every: int = 100
    """optimiser steps between eval-loss passes (0: only at the end)"""
    truncation: Literal["truncate", "skip"] = "truncate"
    """over-long examples are truncated (prompt left, then completion right) or skipped; both are counted"""
    group_by_length: bool = True
    """batch examples of similar length together (little padding, order still random)"""
    disable_dropout: bool = False
    """switch off dropout; off by default for supervised training, where dropout regularises as in pre-training"""


@dataclass
class PretrainConfig(SFTConfig):
    """Pre-training from scratch on raw text: JSONL of {"text"} records, packed into blocks."""

    output_dir: str = "runs/pretrain"
    """where config.yaml, metrics.jsonl, checkpoints/ and final/ are written"""
    max_length: int = 128
    """block size: the packed text is cut into blocks of this many tokens"""


def _split_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): at least 20 examples to hold any out; the held-out ones in random order."""
    held = held_out_indices(len(examples), fraction, seed, min_items=20)
    kept = set(held)
    return [e for i, e in enumerate(examples) if i not in kept], [examples[i] for i in held]


def _prepare_sft(config: SFTConfig, tokenizer):
    records = load_records(config.data, "sft")
    encoded = encode_sft_records(tokenizer, records, max_length=config.max_length,
                                 max_prompt_length=config.max_prompt_length, truncation=config.truncation)
    stats = encoded.stats.as_dict()
    if stats["prompt_truncated"] or stats["completion_truncated"] or stats["skipped"]:
        log.warning("%s: truncation policy touched examples: %s", config.data, stats)
    if config.eval_data:
        eval_records = load_records(config.eval_data, "sft")
        eval_examples = encode_sft_records(tokenizer, eval_records, max_length=config.max_length,
                                           max_prompt_length=config.max_prompt_length,
                                           truncation=config.truncation).examples
        train_examples = encoded.examples
    else:
        train_examples, eval_examples = _split_eval(encoded.examples, config.eval_fraction, config.seed)
    return train_examples, eval_examples, {f"data/{k}": v for k, v in stats.items()}


def _prepare_pretrain(config: PretrainConfig, tokenizer):
    records = load_records(config.data, "text")
    blocks = pack_documents(tokenizer, [r["text"] for r in records], block_size=config.max_length)
    examples = [{"input_ids": b, "labels": list(b)} for b in blocks]
    train, held = _split_eval(examples, config.eval_fraction, config.seed)
    return train, held, {"data/documents": len(records), "data/blocks": len(blocks)}


@torch.no_grad()
def evaluate_loss(model, examples: list[dict], *, batch_size: int, pad_token_id: int, precision: str) -> float:
    """Token-weighted mean loss over ``examples``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate_sft(examples[start: start + batch_size], pad_token_id)
        with autocast(precision):
            loss, n = causal_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        total += float(loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def run_sft(config: SFTConfig, *, resume: bool = False) -> Path:
    """Train and save ``output_dir/final``; returns that folder."""
    return _train(config, pretrain=False, resume=resume)


def run_pretrain(config: PretrainConfig, *, resume: bool = False) -> Path:
    return _train(config, pretrain=True, resume=resume)


def _train(config: SFTConfig, *, pretrain: bool, resume: bool) -> Path:
    out_dir = start_run(config)
    accelerator = make_accelerator(config.precision)

    tokenizer = load_tokenizer(config.model)
    prepare = _prepare_pretrain if pretrain else _prepare_sft
    train_examples, eval_examples, data_stats = prepare(config, tokenizer)
    total_steps = config.total_steps(len(train_examples), processes=accelerator.num_processes)

    model = load_causal_lm(config.model, lora=config.lora)
    if config.disable_dropout:
        disable_dropout(model)
    enable_gradient_checkpointing(model, config.gradient_checkpointing)
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), config.optim, total_steps=total_steps)
    model, optimizer = distributed.prepare_model(accelerator, model, optimizer)
    pad_id = tokenizer.pad_token_id
    n_targets = [sum(1 for label in e["labels"][1:] if label != IGNORE_INDEX) for e in train_examples]

    def step_fn(model, indices):
        batch = collate_sft([train_examples[i] for i in indices], pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss, _ = causal_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        return loss, {}

    def eval_fn(model):
        if not eval_examples:
            return {}
        return {"eval/loss": evaluate_loss(model, eval_examples, batch_size=config.batch_size * 2,
                                           pad_token_id=pad_id, precision=config.precision)}

    # micro-batches are weighted by their target tokens: the step's loss is the token mean
    train_loop(config, accelerator, model, optimizer, scheduler, name="pretrain" if pretrain else "sft",
               out_dir=out_dir, lengths=[len(e["input_ids"]) for e in train_examples],
               group_by_length=config.group_by_length and not pretrain,
               first_metrics={**data_stats, "data/train_examples": len(train_examples),
                              "data/eval_examples": len(eval_examples)},
               step_fn=step_fn, weight_fn=lambda idx: float(sum(n_targets[i] for i in idx)), eval_fn=eval_fn,
               resume=resume)
    return distributed.save_final(accelerator, model, tokenizer, out_dir / "final",
                                  save_adapter_only=config.lora.save_adapter_only)
