"""SimPO (Meng et al. 2024): a margin on length-averaged log-probs; no reference model.

Here: the config, the glue to :func:`rlhfkit.losses.simpo_loss`, and ``run_simpo``. The run is
:func:`rlhfkit.train.direct.preference.train_preference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import require
from rlhfkit.losses import LossOutput, simpo_loss
from rlhfkit.train.direct.batches import Example
from rlhfkit.train.direct.preference import Logps, Objective, PreferenceConfig, logps_stats, train_preference


@dataclass
class SimPOConfig(PreferenceConfig):
    output_dir: str = "runs/simpo"
    """run folder: config.yaml, metrics.jsonl, eval.json, checkpoints/, final/"""
    beta: float = 2.0
    """β: scale of the implicit reward β·(mean log-prob of the response)"""
    gamma: float = 1.0
    """γ: target reward margin, subtracted from the logit (TRL's CPO simpo_gamma; the paper uses γ/β ≈ 0.5)"""

    def validate(self) -> None:
        super().validate()
        require(self.beta > 0, "beta must be positive")


def simpo_objective(config: SimPOConfig) -> Objective:
    def loss(policy: Logps, ref: Logps | None, batch: list[Example]) -> LossOutput:
        out = simpo_loss(policy["chosen"].avg, policy["rejected"].avg, beta=config.beta, gamma=config.gamma)
        return LossOutput(out.losses, {**out.stats, **logps_stats(policy["chosen"].sum, policy["rejected"].sum)})

    return Objective("simpo", ("chosen", "rejected"), loss, reference=False)


def run_simpo(config: SimPOConfig, *, resume: bool = False) -> Path:
    """SimPO; returns ``output_dir/final``."""
    return train_preference(config, simpo_objective(config), resume=resume)
