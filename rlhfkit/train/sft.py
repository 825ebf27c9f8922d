"""Supervised fine-tuning (stage 1 of RLHF, Ouyang et al. 2022 §3.5) and tiny-model pre-training.

One loop serves both: ``rlhfkit sft`` trains on demonstrations with the loss on completion tokens
only; ``rlhfkit pretrain`` trains on packed blocks of raw text with the loss on every token.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import require, save_config
from rlhfkit.data.records import load_records
from rlhfkit.data.tokenize import IGNORE_INDEX, collate_sft, encode_sft_records, pack_documents
from rlhfkit.models.forward import causal_lm_loss
from rlhfkit.models.loading import LoraSettings, load_causal_lm, load_tokenizer, save_model
from rlhfkit.train import common
from rlhfkit.train.loop import LoopSpec, train_loop

log = logging.getLogger("rlhfkit")


@dataclass
class OptimConfig:
    """Optimiser and schedule shared by the supervised loops."""

    learning_rate: float = 2e-5
    """peak learning rate of AdamW"""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)"""
    warmup_ratio: float = 0.05
    """fraction of the steps spent in linear warm-up before the cosine decay"""
    min_lr_ratio: float = 0.1
    """the cosine schedule ends at this fraction of the peak rate"""
    max_grad_norm: float = 1.0
    """gradient clipping by global norm (0 disables)"""


@dataclass
class SFTConfig:
    model: str = ""
    """model folder (or hub name when online) to fine-tune"""
    data: str = ""
    """demonstrations: JSONL or HF dataset of {prompt, completion} or {messages}"""
    eval_data: str | None = None
    """held-out demonstrations; if unset, ``eval_fraction`` of ``data`` is held out"""
    eval_fraction: float = 0.05
    """fraction of ``data`` held out for the eval loss when ``eval_data`` is unset"""
    output_dir: str = "runs/sft"
    """where config.yaml, metrics.jsonl, checkpoints/ and final/ are written"""
    max_length: int = 512
    """longest example in tokens (prompt + completion); see the truncation policy in data/tokenize.py"""
    max_prompt_length: int | None = None
    """prompts longer than this are cut from the left first (default: max_length - 1)"""
    truncation: Literal["truncate", "skip"] = "truncate"
    """over-long examples are truncated (prompt left, then completion right) or skipped; both are counted"""
    batch_size: int = 8
    """examples per micro-batch"""
    gradient_accumulation_steps: int = 1
    """micro-batches per optimiser step"""
    max_steps: int = 0
    """optimiser steps; 0 means ``num_epochs`` passes over the data"""
    num_epochs: float = 1.0
    """passes over the data when ``max_steps`` is 0"""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """optimiser and learning-rate schedule"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast (also on CPU) or full fp32"""
    group_by_length: bool = True
    """batch examples of similar length together (little padding, order still random)"""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings; lora.r = 0 trains all weights"""
    log_every: int = 10
    """optimiser steps between metric lines"""
    eval_every: int = 100
    """optimiser steps between eval-loss passes (0: only at the end)"""
    save_every: int = 200
    """optimiser steps between checkpoints (0: only at the end)"""
    keep_checkpoints: int = 2
    """how many of the newest checkpoints to keep"""
    seed: int = 0
    """seed of initialisation, data order and held-out split"""
    tensorboard: bool = False
    """also write TensorBoard event files"""
    progress: bool = True
    """show a progress bar / periodic progress lines"""

    def validate(self) -> None:
        require(bool(self.model), "model: set the model folder to fine-tune (model=path)")
        require(bool(self.data), "data: set the demonstrations file (data=path.jsonl)")
        require(self.batch_size > 0, "batch_size must be positive")
        require(self.gradient_accumulation_steps > 0, "gradient_accumulation_steps must be positive")
        require(self.max_steps >= 0, "max_steps must be >= 0")
        require(0.0 <= self.eval_fraction < 1.0, "eval_fraction must lie in [0, 1)")
        require(self.max_length > 1, "max_length must exceed 1")


@dataclass
class PretrainConfig(SFTConfig):
    """Pre-training from scratch on raw text: JSONL of {"text"} records, packed into blocks."""

    output_dir: str = "runs/pretrain"
    """where config.yaml, metrics.jsonl, checkpoints/ and final/ are written"""
    max_length: int = 128
    """block size: the packed text is cut into blocks of this many tokens"""


def _split_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(examples) < 20:
        return examples, []
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=gen).tolist()
    n_eval = max(1, int(len(examples) * fraction))
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in order[:n_eval]]


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
        with common.autocast(precision):
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

    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    common.set_seed(config.seed)
    accelerator = common.make_accelerator(config.precision)

    tokenizer = load_tokenizer(config.model)
    prepare = _prepare_pretrain if pretrain else _prepare_sft
    train_examples, eval_examples, data_stats = prepare(config, tokenizer)
    batches_per_epoch = math.ceil(len(train_examples) / config.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // config.gradient_accumulation_steps)
    total_steps = config.max_steps or max(1, int(config.num_epochs * steps_per_epoch))

    model = load_causal_lm(config.model, lora=config.lora)
    optimizer = common.build_optimizer(model.parameters(), lr=config.optim.learning_rate,
                                       weight_decay=config.optim.weight_decay)
    scheduler = common.warmup_cosine(optimizer, warmup_steps=int(config.optim.warmup_ratio * total_steps),
                                     total_steps=total_steps, min_ratio=config.optim.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
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

    spec = LoopSpec(
        name="pretrain" if pretrain else "sft", out_dir=out_dir, total_steps=total_steps,
        batch_size=config.batch_size, lengths=[len(e["input_ids"]) for e in train_examples], seed=config.seed,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        group_by_length=config.group_by_length and not pretrain, max_grad_norm=config.optim.max_grad_norm,
        log_every=config.log_every, eval_every=config.eval_every, save_every=config.save_every,
        keep_checkpoints=config.keep_checkpoints, tensorboard=config.tensorboard, progress=config.progress,
        first_metrics={**data_stats, "data/train_examples": len(train_examples),
                       "data/eval_examples": len(eval_examples)},
    )
    # micro-batches are weighted by their target tokens: the step's loss is the token mean
    train_loop(spec, accelerator, model, optimizer, scheduler, step_fn=step_fn,
               weight_fn=lambda idx: float(sum(n_targets[i] for i in idx)), eval_fn=eval_fn, resume=resume)
    return save_model(accelerator.unwrap_model(model), tokenizer, out_dir / "final",
                      save_adapter_only=config.lora.save_adapter_only)
