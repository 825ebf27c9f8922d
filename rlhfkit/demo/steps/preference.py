"""Demo step: DPO, IPO, ORPO, SimPO and KTO, each from the same SFT model on the same panel preferences.

Every method trains into ``<run>/<name>/`` (a method whose ``final/config.json`` exists is reused;
an interrupted one resumes from its newest checkpoint) and is scored by the same
:meth:`DemoContext.evaluate` as PPO and the rest, plus a few keys of its own: the held-out
preference accuracy and margin of its implicit reward, and whether its chosen log-probs fell
steadily during training (likelihood displacement).

What lives here: the demo's recipes for the direct methods and their summary entries and report table.
What does not: the losses (``rlhfkit.losses``) and the training loop (``rlhfkit.train``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

NAMES = ("dpo", "ipo", "orpo", "simpo", "kto")


@dataclass(frozen=True)
class Recipe:
    """One method of the demo: its config class, run function and hyper-parameters."""

    config: str
    run: str
    learning_rate: float
    max_steps: int
    params: dict = field(default_factory=dict)


# Tuned on the built-in task (runs/demo, seed 0, bf16): a larger β than the usual 0.1 and 60 steps
# of 32 pairs (under 2,000 of the panel's pairs, a fraction of an epoch); longer or hotter runs
# over-optimise (length and KL up, gold down, chosen log-probs falling).
RECIPES: dict[str, Recipe] = {
    "dpo": Recipe("DPOConfig", "run_dpo", 2e-4, 60, {"loss_type": "sigmoid", "beta": 0.3}),
    "ipo": Recipe("DPOConfig", "run_dpo", 2e-4, 60, {"loss_type": "ipo", "beta": 1.0}),
    "orpo": Recipe("ORPOConfig", "run_orpo", 5e-4, 120, {"lam": 0.5}),
    "simpo": Recipe("SimPOConfig", "run_simpo", 1e-4, 60, {"beta": 2.0, "gamma": 1.0}),
    "kto": Recipe("KTOConfig", "run_kto", 2e-4, 60, {"beta": 0.3}),
}
BATCH_SIZE = 32
QUICK_STEPS = 6


def method_config(ctx, name: str, recipe: Recipe | None = None, *, model: Path | None = None, data: Path | None = None):
    """The config of one demo method (also used by tuning scripts with a modified recipe, and by the
    AI-feedback step with its own preferences and starting model)."""
    from rlhfkit.train import direct
    from rlhfkit.train.sft import OptimConfig

    recipe = recipe or RECIPES[name]
    cls = getattr(direct, recipe.config)
    return cls(model=str(model or ctx.sft), data=str(data or ctx.prefs), output_dir=str(ctx.method_dir(name)), max_length=128,
               eval_fraction=0.05, batch_size=8 if ctx.quick else BATCH_SIZE,
               max_steps=QUICK_STEPS if ctx.quick else recipe.max_steps,
               optim=OptimConfig(learning_rate=recipe.learning_rate, warmup_ratio=0.1),
               precision=ctx.precision, log_every=5, save_every=0 if ctx.quick else 50, seed=ctx.method_seed,
               **recipe.params)


def train_method(ctx, name: str, recipe: Recipe | None = None, *, model: Path | None = None,
                 data: Path | None = None) -> Path:
    from rlhfkit.train import direct
    from rlhfkit.train.run import latest_checkpoint

    config = method_config(ctx, name, recipe, model=model, data=data)
    config.validate()
    final = Path(config.output_dir) / "final"
    if not (final / "config.json").exists():
        run: Callable = getattr(direct, (recipe or RECIPES[name]).run)
        run(config, resume=latest_checkpoint(config.output_dir) is not None)
    return final


def _own_keys(folder: Path) -> dict:
    path = folder / "eval.json"
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    keys = {"heldout_pref_accuracy": report.get("eval/rewards/accuracies"),
            "heldout_pref_margin": report.get("eval/rewards/margins"),
            "chosen_logps_falling": report.get("chosen_logps_falling")}
    return {k: v for k, v in keys.items() if v is not None}


def run(ctx) -> dict[str, dict]:
    """Train and evaluate every wanted method; returns ``{name: summary entry}``."""
    entries = {}
    rows = []
    for name in NAMES:
        if not ctx.config.wants(name):
            continue
        final = train_method(ctx, name)
        entry = ctx.evaluate(final, name)
        entry.update(_own_keys(final.parent))
        entries[name] = entry
        config = method_config(ctx, name)
        params = ", ".join(f"{k}={v}" for k, v in RECIPES[name].params.items())
        accuracy = entry.get("heldout_pref_accuracy")
        rows.append(f"| {name} | {params}, lr={config.optim.learning_rate:g}, steps={config.max_steps} | "
                    f"{entry['gold_reward']:.3f} | {entry.get('win_rate_vs_sft', float('nan')):.3f} | "
                    f"{entry.get('kl_to_sft', float('nan')):.2f} | "
                    f"{'–' if accuracy is None else f'{accuracy:.3f}'} |")
    if rows and hasattr(ctx, "add_report_section"):
        ctx.add_report_section(
            "## Direct preference methods\n\n"
            "Each trained from the SFT model on the panel's pairwise preferences (DPO uses the vote share "
            "as a soft label; the others train on the majority label). Held-out accuracy: how often the "
            "method's implicit reward prefers the panel's choice on held-out pairs (KTO's unpaired loss "
            "has none).\n\n"
            "| method | hyper-parameters | gold reward | win rate vs SFT | KL to SFT | held-out pref. accuracy |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return entries
