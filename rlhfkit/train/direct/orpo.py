"""ORPO (Hong et al. 2024): the SFT loss on chosen plus λ times an odds-ratio term; no reference model.

Here: the config, the glue to :func:`rlhfkit.losses.orpo_loss`, and ``run_orpo``. The run is
:func:`rlhfkit.train.direct.preference.train_preference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.config import require
from rlhfkit.losses import LossOutput, orpo_loss, preference_stats
from rlhfkit.train.direct.batches import Example
from rlhfkit.train.direct.preference import Logps, Objective, PreferenceConfig, logps_stats, train_preference
from rlhfkit.train.optim import OptimConfig


@dataclass
class ORPOConfig(PreferenceConfig):
    output_dir: str = "runs/orpo"
    """run folder: config.yaml, metrics.jsonl, eval.json, checkpoints/, final/"""
    lam: float = 0.1
    """λ, the weight of the odds-ratio term added to the SFT loss on chosen (TRL's ORPO beta)"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=8e-6, warmup_ratio=0.1))
    """optimiser and schedule"""

    def validate(self) -> None:
        super().validate()
        require(self.lam >= 0, "lam must be >= 0")


def orpo_objective(config: ORPOConfig) -> Objective:
    def loss(policy: Logps, ref: Logps | None, batch: list[Example]) -> LossOutput:
        chosen, rejected = policy["chosen"].avg, policy["rejected"].avg
        out = orpo_loss(chosen, rejected, -chosen, lam=config.lam)  # NLL of chosen = −mean token log-prob
        stats = {**out.stats, **preference_stats(chosen, rejected, beta=config.lam),  # TRL's λ·avg logp rewards
                 **logps_stats(policy["chosen"].sum, policy["rejected"].sum)}
        return LossOutput(out.losses, stats)

    return Objective("orpo", ("chosen", "rejected"), loss, reference=False)


def run_orpo(config: ORPOConfig, *, resume: bool = False) -> Path:
    """ORPO; returns ``output_dir/final``."""
    return train_preference(config, orpo_objective(config), resume=resume)
