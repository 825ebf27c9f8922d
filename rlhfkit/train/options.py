"""Config fields every supervised-style stage shares (SFT, pre-training, reward models, DPO family).

Each stage's config subclasses :class:`TrainConfig`, adds its own fields and may redeclare a
shared one to change its default (with its own docstring, which ``--help`` then shows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhfkit.config import require
from rlhfkit.models.loading import LoraSettings
from rlhfkit.models.precision import Precision


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
class TrainConfig:
    model: str = ""
    """model folder (or hub name when online) to start from"""
    data: str = ""
    """training records: JSONL file or HF dataset"""
    eval_data: str | None = None
    """held-out records; if unset, ``eval_fraction`` of ``data`` is held out"""
    eval_fraction: float = 0.05
    """fraction of ``data`` held out for evaluation when ``eval_data`` is unset"""
    output_dir: str = "runs/train"
    """where config.yaml, metrics.jsonl, checkpoints/ and final/ are written"""
    max_length: int = 512
    """longest example in tokens (prompt + completion); see the truncation policy in data/tokenize.py"""
    max_prompt_length: int | None = None
    """prompts longer than this are cut from the left first (default: max_length - 1)"""
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
    precision: Precision = "auto"
    """auto (bf16 where the hardware runs it natively, else fp32; the choice is logged), bf16 autocast, or fp32"""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings; lora.r = 0 trains all weights"""
    disable_dropout: bool = True
    """switch off every dropout layer of the trained model (TRL's default for DPO and reward models): a
    loss that compares the model with a reference or between two responses is then not dropout noise"""
    log_every: int = 10
    """optimiser steps between metric lines"""
    eval_every: int = 0
    """optimiser steps between evaluations (0: only at the end)"""
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
        require(bool(self.model), "model: set the model folder to start from (model=path)")
        require(bool(self.data), "data: set the training data (data=path.jsonl)")
        require(self.batch_size > 0, "batch_size must be positive")
        require(self.gradient_accumulation_steps > 0, "gradient_accumulation_steps must be positive")
        require(self.max_steps >= 0, "max_steps must be >= 0")
        require(0.0 <= self.eval_fraction < 1.0, "eval_fraction must lie in [0, 1)")
        require(self.max_length > 1, "max_length must exceed 1")
        require(self.max_prompt_length is None or 0 < self.max_prompt_length < self.max_length,
                f"max_prompt_length ({self.max_prompt_length}) must be positive and below max_length "
                f"({self.max_length}): the completion needs room for at least one token")

    def total_steps(self, n_examples: int) -> int:
        """``max_steps``, or the optimiser steps of ``num_epochs`` passes over ``n_examples``."""
        if self.max_steps:
            return self.max_steps
        per_epoch = max(1, math.ceil(n_examples / self.batch_size) // self.gradient_accumulation_steps)
        return max(1, int(self.num_epochs * per_epoch))
