"""The optimiser every loop shares: :class:`OptimConfig` (a stage config's ``optim`` block), AdamW
without weight decay on 1-d parameters and with a choice of kernel (:func:`build_optimizer`,
:func:`adamw_implementation`), and linear warm-up + cosine decay (:func:`warmup_cosine`,
:func:`optimizer_and_schedule`).

Not here: when the schedule steps (once per optimiser step, in each loop) and the run around a loop
(:mod:`rlhfkit.train.run`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlhfkit.config import require


@dataclass
class OptimConfig:
    """Optimiser and schedule shared by every loop."""

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
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (β1, β2); β2 = 0.95 (as GPT-3 and LLaMA) is steadier than torch's and TRL's 0.999 on few, noisy steps"""
    adam_eps: float = 1e-8
    """AdamW ε, added to the root of the second moment (torch's and TRL's default)"""
    adam_implementation: str = "auto"
    """AdamW kernel: fused (one kernel per parameter; on a CPU ~3× faster than the loop), foreach (multi-tensor),
    single (torch's per-parameter loop), or auto: fused on CUDA, single on a CPU. fused computes the same update
    to float rounding (1 ulp), which over a long run changes sampled results, so a CPU keeps the loop by default"""

    def validate(self) -> None:
        require(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
                f"optim.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        require(self.adam_eps > 0, f"optim.adam_eps must be > 0, got {self.adam_eps}")
        require(self.adam_implementation in ADAMW_IMPLEMENTATIONS,
                f"optim.adam_implementation must be one of {', '.join(ADAMW_IMPLEMENTATIONS)}, "
                f"got {self.adam_implementation!r}")


def build_optimizer(params, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95), eps: float = 1e-8,
                    implementation: str = "auto"):
    """AdamW; no weight decay on biases and norm weights (1-d parameters).

    ``implementation`` (:func:`adamw_implementation`): "fused" runs torch's fused kernel (one pass over
    each parameter for the whole update), "foreach" the multi-tensor update, "single" torch's
    per-parameter loop, "auto" fused on CUDA and the loop on a CPU. They compute the same update to
    float rounding (tests/unit/test_optim.py)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps,
                             **adamw_implementation(params, implementation))


ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach", "single")


def adamw_implementation(params: list, implementation: str = "auto") -> dict[str, bool]:
    """torch.optim.AdamW's keyword for the implementation.

    Measured on a 25M-parameter Llama, 1 CPU thread (torch 2.13): fused 16 ms per step, the
    per-parameter loop 55 ms, foreach 97 ms (it materialises every intermediate for all parameters
    at once, so on a CPU it moves more memory). foreach equals the loop bit for bit on a CPU; fused
    differs by about 1 ulp per step, enough to change which tokens a long run samples later (the
    demo's sampled results moved), so "auto" keeps the loop on a CPU and fuses on CUDA only."""
    choices = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"AdamW implementation must be one of {', '.join(ADAMW_IMPLEMENTATIONS)}, "
                         f"got {implementation!r}")
    if implementation != "auto":
        return choices[implementation]
    cuda = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    return choices["fused"] if cuda else choices["single"]


def warmup_cosine(optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """Linear warm-up to the peak rate, then cosine decay to ``min_ratio`` of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_and_schedule(params, optim, *, total_steps: int, extra_groups: tuple = ()):
    """AdamW + warm-up/cosine from an ``OptimConfig``; ``extra_groups`` (e.g. a value model with its
    own rate) are added before the schedule is built, so it scales them too."""
    optimizer = build_optimizer(params, lr=optim.learning_rate, weight_decay=optim.weight_decay,
                                betas=optim.adam_betas, eps=optim.adam_eps, implementation=optim.adam_implementation)
    for group in extra_groups:
        optimizer.add_param_group(group)
    scheduler = warmup_cosine(optimizer, warmup_steps=int(optim.warmup_ratio * total_steps),
                              total_steps=total_steps, min_ratio=optim.min_lr_ratio)
    return optimizer, scheduler
