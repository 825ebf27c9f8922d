"""DPO (Rafailov et al. 2023) and its variants on the same pairs: IPO (Azar et al. 2023), hinge
(SLiC, Zhao et al. 2023), robust DPO (Chowdhury et al. 2024), conservative DPO (label smoothing) and
soft labels (each pair's ``label_prob``).

Here: the config, the glue from a batch's log-probs to :data:`rlhfkit.losses.DPO_LOSSES`, and
``run_dpo``. The run (data, cached reference log-probs, the loop, the report) is
:func:`rlhfkit.train.direct.preference.train_preference`; the losses are pure functions in
:mod:`rlhfkit.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import require
from rlhfkit.losses import AVG_LOGPS_LOSSES, DPO_LOSSES, LossOutput
from rlhfkit.train.direct.batches import Example
from rlhfkit.train.direct.preference import Logps, Objective, PreferenceConfig, logps_stats, train_preference


@dataclass
class DPOConfig(PreferenceConfig):
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    """sigmoid (DPO), ipo (on length-averaged log-ratios), hinge (SLiC), robust (de-biased for label noise)"""
    beta: float = 0.1
    """β: strength of the implicit KL constraint to the reference (IPO: τ, the target margin is 1/(2β))"""
    label_smoothing: float = 0.0
    """ε, the assumed rate of flipped labels: conservative DPO (sigmoid) or robust DPO; in [0, 0.5)"""
    use_label_prob: bool = True
    """sigmoid loss: train on each record's label_prob as a soft label; otherwise (and for the other losses) a pair with label_prob < 0.5 is flipped and a tie dropped"""
    precompute_ref_logps: bool = True
    """compute the reference log-probs of the examples the run uses once, before training, and cache them by token
    hash; false: compute them in every step, with the LoRA adapter disabled or (without LoRA) by a frozen copy of the
    initial model kept in memory"""

    def validate(self) -> None:
        super().validate()
        require(self.beta > 0, "beta must be positive")
        require(0.0 <= self.label_smoothing < 0.5, "label_smoothing must lie in [0, 0.5)")
        require(self.label_smoothing == 0.0 or self.loss_type in ("sigmoid", "robust"),
                f"label_smoothing applies to loss_type sigmoid or robust, not {self.loss_type}")


def dpo_objective(config: DPOConfig) -> Objective:
    fn = DPO_LOSSES[config.loss_type]
    avg = config.loss_type in AVG_LOGPS_LOSSES
    kwargs = {"label_smoothing": config.label_smoothing} if config.loss_type in ("sigmoid", "robust") else {}
    soft = config.loss_type == "sigmoid" and config.use_label_prob

    def loss(policy: Logps, ref: Logps | None, batch: list[Example]) -> LossOutput:
        assert ref is not None
        pick = (lambda x: x.avg) if avg else (lambda x: x.sum)
        extra = dict(kwargs)
        if soft:
            probs = [1.0 if ex.label_prob is None else ex.label_prob for ex in batch]
            extra["label_prob"] = torch.tensor(probs, device=policy["chosen"].sum.device)
        out = fn(pick(policy["chosen"]), pick(policy["rejected"]), pick(ref["chosen"]), pick(ref["rejected"]),
                 beta=config.beta, **extra)
        return LossOutput(out.losses, {**out.stats, **logps_stats(policy["chosen"].sum, policy["rejected"].sum)})

    name = "dpo" if config.loss_type == "sigmoid" else config.loss_type
    return Objective(name, ("chosen", "rejected"), loss, soft_labels=soft)


def run_dpo(config: DPOConfig, *, resume: bool = False) -> Path:
    """DPO / IPO / hinge / robust DPO; returns ``output_dir/final``."""
    return train_preference(config, dpo_objective(config), resume=resume)
