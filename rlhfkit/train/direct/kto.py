"""KTO (Ethayarajh et al. 2024): desirable / undesirable examples, unpaired or split from pairs, against
a reference point estimated from mismatched (prompt, other completion) pairs.

Here: the config, the glue to :func:`rlhfkit.losses.kto_loss`, and ``run_kto``. The unpaired
examples and their mismatched pairs are built in :mod:`rlhfkit.train.direct.batches`; the run is
:func:`rlhfkit.train.direct.preference.train_preference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import require
from rlhfkit.losses import LossOutput, kto_loss, kto_reference_point
from rlhfkit.ops import masked_mean
from rlhfkit.train.direct.batches import Example
from rlhfkit.train.direct.preference import Logps, Objective, PreferenceConfig, train_preference


@dataclass
class KTOConfig(PreferenceConfig):
    output_dir: str = "runs/kto"
    """run folder: config.yaml, metrics.jsonl, reference_logps.pt, eval.json, checkpoints/, final/"""
    beta: float = 0.1
    """β of the KTO value function"""
    desirable_weight: float = 1.0
    """λ_D, weight of desirable examples"""
    undesirable_weight: float = 1.0
    """λ_U, weight of undesirable examples (the paper recommends λ_D·n_D / (λ_U·n_U) in [1, 4/3])"""
    precompute_ref_logps: bool = True
    """compute the reference log-probs of the examples the run uses once, before training, and cache them by token
    hash; false: compute them in every step, with the LoRA adapter disabled or (without LoRA) by a frozen copy of the
    initial model kept in memory"""

    def validate(self) -> None:
        super().validate()
        require(self.beta > 0, "beta must be positive")
        require(self.desirable_weight > 0 and self.undesirable_weight > 0, "KTO weights must be positive")


def kto_objective(config: KTOConfig) -> Objective:
    def loss(policy: Logps, ref: Logps | None, batch: list[Example]) -> LossOutput:
        assert ref is not None
        labels = torch.tensor([bool(ex.label) for ex in batch], device=policy["completion"].sum.device)
        # z0: mean log-ratio over mismatched (prompt, other completion) pairs, detached, ≥ 0
        z0 = kto_reference_point(policy["kl"].sum, ref["kl"].sum)
        out = kto_loss(policy["completion"].sum, ref["completion"].sum, labels, kl_reference=z0, beta=config.beta,
                       desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight)
        logps = policy["completion"].sum.detach()
        stats = {**out.stats, "logps/chosen": masked_mean(logps, labels), "logps/rejected": masked_mean(logps, ~labels)}
        return LossOutput(out.losses, stats)

    return Objective("kto", ("completion",), loss, nograd_roles=("kl",))


def run_kto(config: KTOConfig, *, resume: bool = False) -> Path:
    """KTO; returns ``output_dir/final``."""
    return train_preference(config, kto_objective(config), resume=resume)
