"""One algorithm on the rlhfkit side: its config built from a :class:`~benchmarks.workload.BenchSpec`,
run through the stage's public entry point (``run_sft``, ``run_dpo``, …) exactly as a user would.

The options that make the work match TRL's (AdamW betas / eps, an unshuffled data order) are new in
rlhfkit (issue 13 §3); :func:`missing_options` names those this checkout lacks, and the run then says
so in its result (``unmatched``) instead of pretending the work is the same.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from benchmarks.workload import BenchSpec, gold_reward

SUPERVISED_LOSS_KEY = "train/loss"
ONLINE_LOSS_KEY = "loss/total"


def missing_options() -> list[str]:
    """The rlhfkit options the harness needs for matched work that this checkout does not have."""
    from rlhfkit.train.optim import OptimConfig
    from rlhfkit.train.supervised import SupervisedConfig

    optim = {f.name for f in dataclasses.fields(OptimConfig)}
    supervised = {f.name for f in dataclasses.fields(SupervisedConfig)}
    missing = [f"optim.{name}" for name in ("adam_betas", "adam_eps") if name not in optim]
    if "shuffle" not in supervised:
        missing.append("shuffle (supervised stages)")
    return missing


def _optim(spec: BenchSpec):
    from rlhfkit.train.optim import OptimConfig

    kwargs = dict(learning_rate=spec.learning_rate, weight_decay=0.0, warmup_ratio=0.0, min_lr_ratio=1.0,
                  max_grad_norm=1.0)
    names = {f.name for f in dataclasses.fields(OptimConfig)}
    if "adam_betas" in names:
        kwargs["adam_betas"] = tuple(spec.adam_betas)
    if "adam_eps" in names:
        kwargs["adam_eps"] = spec.adam_eps
    return OptimConfig(**kwargs)


def _common(spec: BenchSpec, out_dir: Path) -> dict:
    return dict(output_dir=str(out_dir), seed=spec.seed, precision="fp32", optim=_optim(spec), progress=False,
                save_every=0, keep_checkpoints=1, disable_dropout=True)


def _supervised(cls, spec: BenchSpec, out_dir: Path, **kwargs):
    names = {f.name for f in dataclasses.fields(cls)}
    extra = {"shuffle": False} if "shuffle" in names else {}
    if "group_by_length" in names:
        extra["group_by_length"] = False
    return cls(**_common(spec, out_dir), max_length=spec.max_length, batch_size=spec.batch_size,
               max_steps=spec.steps, eval_fraction=0.0, eval_every=0, log_every=1, **extra, **kwargs)


def _online(cls, spec: BenchSpec, paths: dict, out_dir: Path, **kwargs):
    from rlhfkit.rollout.base import SamplingConfig

    return cls(**_common(spec, out_dir), model=paths["model"], prompts=paths["prompts"],
               sampling=SamplingConfig(max_new_tokens=spec.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                                       batch_size=spec.batch_size),
               max_prompt_length=spec.max_prompt_length, total_steps=spec.steps, batch_size=spec.batch_size,
               num_ppo_epochs=1, num_minibatches=1, kl_coef=spec.kl_coef, forward_batch_size=spec.batch_size,
               **kwargs)


def run(algo: str, spec: BenchSpec, paths: dict, out_dir: Path) -> dict:
    """Train ``algo`` for ``spec.steps`` steps; returns {step1_loss, time_split (online RL)}."""
    out_dir = Path(out_dir)
    if algo == "sft":
        from rlhfkit.train.sft import SFTConfig, run_sft

        run_sft(_supervised(SFTConfig, spec, out_dir, model=paths["model"], data=paths["sft"]))
    elif algo == "reward":
        from rlhfkit.train.reward_model import RewardConfig, run_reward

        run_reward(_supervised(RewardConfig, spec, out_dir, model=paths["reward_init"], data=paths["pairs"]))
    elif algo == "dpo":
        from rlhfkit.train.direct.dpo import DPOConfig, run_dpo

        run_dpo(_supervised(DPOConfig, spec, out_dir, model=paths["model"], data=paths["pairs"], beta=spec.beta,
                            precompute_ref_logps=True))
    elif algo == "orpo":
        from rlhfkit.train.direct.orpo import ORPOConfig, run_orpo

        run_orpo(_supervised(ORPOConfig, spec, out_dir, model=paths["model"], data=paths["pairs"], lam=spec.beta))
    elif algo == "simpo":
        from rlhfkit.train.direct.simpo import SimPOConfig, run_simpo

        run_simpo(_supervised(SimPOConfig, spec, out_dir, model=paths["model"], data=paths["pairs"],
                              beta=spec.simpo_beta, gamma=spec.simpo_gamma))
    elif algo == "kto":
        from rlhfkit.train.direct.kto import KTOConfig, run_kto

        run_kto(_supervised(KTOConfig, spec, out_dir, model=paths["model"], data=paths["unpaired"], beta=spec.beta,
                            precompute_ref_logps=True))
    elif algo in ("grpo", "rloo"):
        from rlhfkit.train.rl.grpo import GRPOConfig, run_grpo
        from rlhfkit.train.rl.rloo import RLOOConfig, run_rloo

        cls, fn = (GRPOConfig, run_grpo) if algo == "grpo" else (RLOOConfig, run_rloo)
        # log_kl=False: with β = 0 TRL computes no reference log-probs, and neither does rlhfkit then
        # (by default it still runs the reference pass to log the KL, a pass the user can switch off)
        fn(_online(cls, spec, paths, out_dir, num_generations=spec.num_generations, log_kl=spec.kl_coef > 0),
           reward_fns=[gold_reward])
    elif algo == "ppo":
        from rlhfkit.train.rl.ppo import PPOConfig, run_ppo
        from rlhfkit.train.rl.reward_sources import RewardSettings

        run_ppo(_online(PPOConfig, spec, paths, out_dir, reward=RewardSettings(model=paths["reward_init"]),
                        value_model="reward"))
    else:
        raise ValueError(f"unknown algorithm {algo!r}")
    return read_metrics(out_dir / "metrics.jsonl", online=algo in ("grpo", "rloo", "ppo"))


TIME_KEYS = ("time/generate", "time/score", "time/reference", "time/train")


def read_metrics(path: Path, *, online: bool) -> dict:
    """The step-1 loss and, for online RL, the summed time split from a run's ``metrics.jsonl``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    first = next((r for r in rows if r.get("step") == 1), {})
    key = ONLINE_LOSS_KEY if online else SUPERVISED_LOSS_KEY
    split = {k: sum(float(r.get(k, 0.0)) for r in rows if isinstance(r.get("step"), int)) for k in TIME_KEYS} \
        if online else {}
    return {"step1_loss": first.get(key), "time_split": split}
