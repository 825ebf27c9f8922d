"""The rollout interface every generation backend implements (transformers now; vLLM later).

``generate(prompt_ids) -> Rollout``: prompts are lists of token ids (no padding); the rollout
holds left-padded prompts, right-padded responses cut after their first EOS, and the sampler's
per-token log-probs (of the temperature-scaled distribution, before top-p / top-k filtering, so the
training forward pass that divides its logits by the same temperature reproduces them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class SamplingConfig:
    """How responses are sampled."""

    max_new_tokens: int = 64
    """fixed maximum response length in tokens"""
    temperature: float = 1.0
    """sampling temperature; the training forward pass divides its logits by the same value"""
    top_p: float = 1.0
    """nucleus sampling threshold (1.0 disables)"""
    top_k: int = 0
    """keep only the k most likely tokens (0 disables)"""
    batch_size: int = 64
    """prompts per generate call"""


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R) right-padded, pad after the first EOS
    response_mask: torch.Tensor  # (B, R) 1 on response tokens up to and including EOS
    logprobs: torch.Tensor  # (B, R) sampler log-probs, 0 on padding
    has_eos: torch.Tensor  # (B,) bool

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (B, P+R)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def completion_mask(self) -> torch.Tensor:
        return torch.cat([torch.zeros_like(self.prompt_mask), self.response_mask], dim=1)


class Generator(Protocol):
    def generate(self, prompt_ids: list[list[int]]) -> Rollout: ...
