"""``rlhfkit demo --seeds 0,1,2``: every wanted policy method retrained on several training seeds.

One seed at one precision is an anecdote: the same recipe gave PPO a win rate vs SFT of 0.718 on
training seed 0 and 0.677 on seed 1. The task, the SFT model, the panel's labels and the reward
model stay those of the run's ``seed``; only the method steps (the DPO family and PPO / GRPO /
RLOO) are retrained, each seed into ``<run>/seeds/<s>/<method>`` (the run's own seed reuses the
run's folders), and evaluated on the same prompts against the same SFT samples. The AI-feedback
methods are not rerun: their judge and constitution models would have to be retrained as well.

What lives here: the loop over seeds, the aggregate (:func:`aggregate`) and its report section.
What does not: the methods (``rlhfkit.demo.steps``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlhfkit.demo.steps import preference, rl

SEEDED_STEPS = (preference, rl)
"""the method steps a seed reruns"""
KEY = "win_rate_vs_sft"


def aggregate(per_seed: dict[int, dict]) -> dict:
    """Mean, sample standard deviation, range and each seed's win rate and interval of one method.

    ``per_seed`` maps a training seed to the method's summary entry on it. ``all_above_half`` holds when
    every seed's whole interval lies above 0.5 (the method beat SFT on every seed, not on average)."""
    seeds = sorted(per_seed)
    rates = [per_seed[s][KEY] for s in seeds]
    n = len(rates)
    mean = sum(rates) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rates) / (n - 1)) if n > 1 else 0.0
    intervals = [per_seed[s].get(f"{KEY}_ci") for s in seeds]
    return {
        "seeds": seeds,
        "win_rate_vs_sft_mean": mean,
        "win_rate_vs_sft_std": std,
        "win_rate_vs_sft_min": min(rates),
        "win_rate_vs_sft_max": max(rates),
        "all_above_half": all(ci is not None and ci[0] > 0.5 for ci in intervals),
        "per_seed": {str(s): {KEY: per_seed[s][KEY], f"{KEY}_ci": per_seed[s].get(f"{KEY}_ci"),
                              "gold_reward": per_seed[s].get("gold_reward"), "kl_to_sft": per_seed[s].get("kl_to_sft")}
                     for s in seeds},
    }


def run_seeds(ctx, seeds: list[int], base_entries: dict[str, dict]) -> dict:
    """Retrain the seeded method steps on each of ``seeds``; ``base_entries`` are the run's own entries
    (reused for the run's seed). Returns ``{method: aggregate}`` and writes ``<run>/seeds.json``."""
    per_method: dict[str, dict[int, dict]] = {}
    names = [n for step in SEEDED_STEPS for n in step.NAMES if ctx.config.wants(n)]
    for seed in seeds:
        if seed == ctx.seed and all(n in base_entries for n in names):
            entries = {n: base_entries[n] for n in names}
        else:
            print(f"seeds: training the methods on seed {seed}")
            seeded = ctx.for_train_seed(seed)
            entries = {}
            for step in SEEDED_STEPS:
                if any(ctx.config.wants(n) for n in step.NAMES):
                    entries.update(step.run(seeded))
        for name in names:
            if name in entries and KEY in entries[name]:
                per_method.setdefault(name, {})[seed] = entries[name]
    result = {name: aggregate(runs) for name, runs in per_method.items()}
    Path(ctx.out, "seeds.json").write_text(json.dumps(result, indent=2))
    return result


def seeds_section(result: dict) -> str:
    """Markdown: each method's mean win rate vs SFT over the training seeds, its spread and every seed's value."""
    if not result:
        return ""
    seeds = sorted({int(s) for r in result.values() for s in r["per_seed"]})
    lines = ["| method | mean | std | " + " | ".join(f"seed {s}" for s in seeds) + " | every interval > 0.5 |",
             "|---|---|---|" + "---|" * len(seeds) + "---|"]
    for name, r in result.items():
        cells = []
        for s in seeds:
            e = r["per_seed"].get(str(s))
            ci = e and e.get(f"{KEY}_ci")
            cells.append("–" if e is None else f"{e[KEY]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        lines.append(f"| {name} | {r['win_rate_vs_sft_mean']:.3f} | {r['win_rate_vs_sft_std']:.3f} | "
                     + " | ".join(cells) + f" | {'yes' if r['all_above_half'] else 'no'} |")
    return ("## Across training seeds\n\n"
            "Win rate vs SFT of each method retrained on every training seed (same task, SFT model, labels and "
            "reward model; the same evaluation prompts and SFT samples). Standard deviation over seeds "
            "(n − 1); brackets: each seed's 95% bootstrap interval over prompts.\n\n" + "\n".join(lines) + "\n")
