"""Demo step: PPO, GRPO and RLOO from the SFT policy against the learned reward model, and the
kl_coef = 0 ablation that makes reward over-optimisation visible.

Each method trains into ``<run>/<name>/`` (a method whose ``final/config.json`` exists is reused; an
interrupted one resumes from its newest checkpoint), logs the task's gold reward next to the proxy
(reward-model) score at every step, and is scored by the same :meth:`DemoContext.evaluate` as
every other method. The report gets the proxy-vs-gold curves of ``ppo`` and ``ppo_no_kl``.

What lives here: the demo's RL recipes, their summary entries, the proxy-vs-gold table. What does not:
the RL loops, rollouts and reward sources (``rlhfkit.train.rl``, ``rlhfkit.train.rl.reward_sources``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ("ppo", "ppo_no_kl", "grpo", "rloo", "ppo_calibrated", "ppo_ensemble")
ENSEMBLE_SIZE = 3
"""members of the opt-in ``reward_ensemble`` that ``ppo_ensemble`` optimises"""


@dataclass(frozen=True)
class Recipe:
    """One RL method of the demo: its config class, run function and hyper-parameters."""

    config: str
    run: str
    module: str
    params: dict = field(default_factory=dict)


_SHARED = {"learning_rate": 3e-4, "total_steps": 40, "batch_size": 64, "num_ppo_epochs": 2, "num_minibatches": 2,
           "missing_eos_penalty": 1.0}
_PPO = {**_SHARED, "kl_coef": 0.2, "vf_coef": 0.1, "value_model": "reward", "value_learning_rate": 1e-3,
        "batch_size": 128, "num_minibatches": 4}

# Tuned on the built-in task (runs/demo, seed 0, reward model at 0.63 accuracy vs gold). PPO: kl_coef
# 0.03 / 0.1 / 0.3 / 0.5 / 0.7 / 1.0 gave win rates vs SFT 0.43 / 0.52 / 0.60 / 0.66 / 0.60 / 0.58 (0.5
# with seed 1: 0.60); best-of-8 SFT samples picked by the same reward model reach only 0.58, so the
# reward model, not the optimiser, is the ceiling. With the stronger reward model (0.78 vs gold, 3,000
# labelled prompts) batch 128 in 4 minibatches gave 0.718 (batch 64: 0.687; lr 2e-4 for 60 steps: 0.693;
# kl_coef 0.3: 0.697). With the reward model trained with GRM's regulariser (0.76 fp32 / 0.79 bf16 vs
# gold) the penalty of 0.5 held PPO back: over training seeds 0-2, kl_coef 0.3 gave 0.712 +- 0.010
# (fp32) / 0.705 +- 0.033 (bf16) against 0.685 / 0.680 at 0.5. On twice the labels (reward model 0.83 /
# 0.84) the reward's spread on SFT samples shrank (std 1.84 -> 1.45 fp32, 1.93 -> 1.65 bf16), which
# makes the same coefficient a stronger penalty: 0.3 gave 0.711 +- 0.008 / 0.675 +- 0.014, 0.2 gives
# 0.711 +- 0.022 / 0.732 +- 0.010 (the README's seeds section). GRPO's KL is a per-token mean in the
# loss (k3), hence its own coefficient; RLOO's is the per-sequence sum in the reward, as PPO's. GRPO
# centres rewards within each group without dividing by the group's std: with this noisy reward model,
# dividing by the std of near-tied groups amplified reward-model noise (win rate 0.57 with the std, 0.60
# without, at lr 1e-4, kl_coef 0.3); with token sums over a constant instead of per-response means
# (loss_aggregation=seq_sum_norm) it is Dr. GRPO (Liu et al. 2025), both of its changes.
RECIPES: dict[str, Recipe] = {
    "ppo": Recipe("PPOConfig", "run_ppo", "rlhfkit.train.rl.ppo", _PPO),
    # 40 steps like PPO (was 60): gold already falls from step ~10 (KL > 10) and is below SFT's by step 30
    "ppo_no_kl": Recipe("PPOConfig", "run_ppo", "rlhfkit.train.rl.ppo", {**_PPO, "kl_coef": 0.0, "total_steps": 40}),
    "grpo": Recipe("GRPOConfig", "run_grpo", "rlhfkit.train.rl.grpo",
                   {**_SHARED, "learning_rate": 1e-4, "num_generations": 4, "kl_in": "loss", "kl_coef": 0.3,
                    "scale_by_std": False, "loss_aggregation": "seq_sum_norm"}),
    "rloo": Recipe("RLOOConfig", "run_rloo", "rlhfkit.train.rl.rloo",
                   {**_SHARED, "num_generations": 4, "kl_in": "reward", "kl_coef": 0.5}),
    # opt-in experiments (DemoConfig's OPT_IN; evaluation issue §4): PPO's recipe on another reward.
    # ppo_calibrated: the reward divided by the reward model's fitted temperature T (calibrated log-odds).
    # ppo_ensemble: the mean − λ·std of ENSEMBLE_SIZE reward models (uncertainty-weighted optimisation,
    # Coste et al. 2023), λ = 1
    "ppo_calibrated": Recipe("PPOConfig", "run_ppo", "rlhfkit.train.rl.ppo", {**_PPO, "reward_calibrated": True}),
    "ppo_ensemble": Recipe("PPOConfig", "run_ppo", "rlhfkit.train.rl.ppo", {**_PPO, "reward_ensemble_std_coef": 1.0}),
}
QUICK = {"total_steps": 3, "batch_size": 8, "num_generations": 2}


def method_config(ctx, name: str, recipe: Recipe | None = None, **overrides):
    """The config of one demo method (tuning scripts pass a modified recipe or overrides)."""
    import importlib

    from rlhfkit.config import require
    from rlhfkit.rollout.base import SamplingConfig
    from rlhfkit.train.rl.reward_sources import RewardSettings
    from rlhfkit.train.optim import OptimConfig

    recipe = recipe or RECIPES[name]
    params = {**recipe.params, **(QUICK if ctx.quick else {}), **overrides}
    if "reward_ensemble_std_coef" in params:
        require(ctx.reward_ensemble is not None, f"{name}: this run has no reward ensemble (reward_ensemble/)")
        reward = RewardSettings(model=str(ctx.reward_ensemble), ensemble_std_coef=params["reward_ensemble_std_coef"])
    else:
        reward = RewardSettings(model=str(ctx.reward), calibrated=bool(params.get("reward_calibrated", False)))
    cls = getattr(importlib.import_module(recipe.module), recipe.config)
    names = {f for f in cls.__dataclass_fields__}
    params = {k: v for k, v in params.items() if k in names or k == "learning_rate"}
    lr = params.pop("learning_rate")
    base = dict(model=str(ctx.sft), prompts=str(ctx.rl_prompts), output_dir=str(ctx.method_dir(name)),
                reward=reward,
                sampling=SamplingConfig(max_new_tokens=ctx.config.max_new_tokens, batch_size=64),
                max_prompt_length=64, optim=OptimConfig(learning_rate=lr, warmup_ratio=0.0, min_lr_ratio=1.0),
                save_every=0 if ctx.quick else 20, seed=ctx.method_seed, progress=not ctx.quick,
                precision=ctx.precision)
    return cls(**{**base, **params})


def train_method(ctx, name: str, recipe: Recipe | None = None, **overrides) -> Path:
    import importlib

    from rlhfkit.train.run import latest_checkpoint

    recipe = recipe or RECIPES[name]
    config = method_config(ctx, name, recipe, **overrides)
    final = Path(config.output_dir) / "final"
    if not (final / "config.json").exists():
        run = getattr(importlib.import_module(recipe.module), recipe.run)
        run(config, resume=latest_checkpoint(config.output_dir) is not None, gold_fn=ctx.task.gold_batch)
    return final


def read_curve(run_dir: Path) -> list[dict]:
    """(step, proxy, gold, kl) of every logged training step."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        m = json.loads(line)
        if "gold/reward" in m:
            proxy = m.get("reward/reward_model_mean", m["objective/scores"])
            rows.append({"step": m["step"], "proxy": proxy, "gold": m["gold/reward"], "kl": m["objective/kl"]})
    return rows


def _smooth(values: list[float], k: int) -> list[float]:
    return [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]


def curve_section(curves: dict[str, list[dict]], points: int = 12) -> str:
    """Markdown table: proxy and gold reward of the training samples over steps (5-step means)."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return ""
    longest = max(len(v) for v in curves.values())
    stride = max(1, longest // points)
    header = "| step | " + " | ".join(f"{n} proxy | {n} gold | {n} KL" for n in curves) + " |"
    lines = [header, "|---|" + "---|---|---|" * len(curves)]
    smoothed = {n: {key: _smooth([r[key] for r in rows], 5) for key in ("proxy", "gold", "kl")}
                for n, rows in curves.items()}
    shown = list(range(stride - 1, longest, stride))
    if shown[-1] != longest - 1:
        shown.append(longest - 1)
    for i in shown:
        cells = []
        for name, rows in curves.items():
            if i < len(rows):
                s = smoothed[name]
                cells.append(f"{s['proxy'][i]:.3f} | {s['gold'][i]:.3f} | {s['kl'][i]:.2f}")
            else:
                cells.append("– | – | –")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return (
        "## Reward over-optimisation: PPO with and without the KL penalty\n\n"
        "Proxy (the learned reward model) and gold reward of each step's training samples, and the KL "
        "to the SFT policy per response (nats), as 5-step running means. Without the KL penalty the "
        "policy keeps climbing the proxy while gold stalls or falls: it exploits the reward model's "
        "errors instead of getting better.\n\n" + "\n".join(lines) + "\n"
    )


def variant(config) -> str:
    """What the method really was, for the results table: "Dr. GRPO" only when both of Liu et al.'s
    changes hold (no std scaling and no per-response length normalisation)."""
    name = type(config).__name__.removesuffix("Config")
    if name == "GRPO":
        if config.is_dr_grpo:
            name = "Dr. GRPO"
        elif not config.scale_by_std:
            name = "GRPO without std scaling"
    reward = config.reward
    if reward.ensemble_std_coef:
        name += f", reward = ensemble mean − {reward.ensemble_std_coef:g}·std"
    if reward.calibrated:
        name += ", reward / T"
    return f"{name}, loss_aggregation={config.loss_aggregation}"


def run(ctx) -> dict[str, dict]:
    """Train and evaluate every wanted RL method; returns ``{name: summary entry}``."""
    if ctx.reward is None:
        print("rl: no reward model in this run; PPO / GRPO / RLOO skipped")
        return {}
    entries = {}
    for name in NAMES:
        if not ctx.config.wants(name):
            continue
        final = train_method(ctx, name)
        entry = ctx.evaluate(final, name)
        entry["variant"] = variant(method_config(ctx, name))
        curve = read_curve(final.parent)
        if curve:
            entry["train_gold_first_last"] = [curve[0]["gold"], _smooth([r["gold"] for r in curve], 5)[-1]]
            entry["train_proxy_first_last"] = [curve[0]["proxy"], _smooth([r["proxy"] for r in curve], 5)[-1]]
        entries[name] = entry
    section = curve_section({n: read_curve(ctx.method_dir(n)) for n in ("ppo", "ppo_no_kl") if n in entries})
    if section and hasattr(ctx, "add_report_section"):
        ctx.add_report_section(section)
    return entries
