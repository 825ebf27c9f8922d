"""Demo steps 5 and 6: the simulated panel labels SFT samples; a reward model learns from them.

Labels come the way a real project would collect them: pairs of responses sampled from the SFT
policy, each pair judged by three annotators of the panel (``label_prob`` = their vote share for
the chosen one, ``annotator`` = who voted), and 4-way rankings by a single annotator. Held-out
pairs (eval prompts, never trained on) measure the reward model against gold next to the panel's
own agreement with gold: the noise ceiling a reward model trained on these labels can reach.

What lives here: the labelling (pairs, rankings, held-out pairs) and the demo's reward-model run and
summary entry. What does not: the annotators themselves (``rlhfkit.tasks.panel``), reward-model
training (``rlhfkit.train``) and scoring (``rlhfkit.models``).
"""

from __future__ import annotations

import json
import time

from rlhfkit.data.records import write_jsonl
from rlhfkit.demo.context import DemoContext, DemoStageConfig, random_for

VOTERS = 3
K_RANKING = 4
PAIR_SAMPLES = 2


def _sft_samples(ctx: DemoContext, prompts: list[str], k: int, seed: int) -> list[list[str]]:
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.sample import generate_texts

    return generate_texts(load_causal_lm(ctx.sft), load_tokenizer(ctx.sft), prompts, n=k,
                          max_new_tokens=ctx.config.max_new_tokens, seed=seed)


def _vote(task, prompt: str, a: str, b: str, rng) -> dict | None:
    """Three annotators vote on (a, b); returns a pairwise record with the majority as chosen."""
    voters = rng.sample(task.panel, VOTERS) if len(task.panel) >= VOTERS else task.panel
    votes_a = [voter.label(prompt, a, b, rng) == 0 for voter in voters]
    share_a = sum(votes_a) / len(votes_a)
    chosen, rejected, prob = (a, b, share_a) if share_a > 0.5 else (b, a, 1 - share_a)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "label_prob": prob,
            "annotator": [v.name for v in voters]}


def _distinct_pair(responses: list[str]) -> tuple[str, str] | None:
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if responses[i].strip() and responses[j].strip() and responses[i] != responses[j]:
                return responses[i], responses[j]
    return None


def majority_prob(panel, prompt: str, a: str, b: str, voters: int = VOTERS) -> float:
    """P(the majority of ``voters`` annotators drawn from ``panel`` prefers ``a``), averaged over every
    draw of voters, from each annotator's Bradley–Terry probability: the panel's expected agreement
    with gold on a pair, without the noise of one draw of votes."""
    from itertools import combinations

    probs = [annotator.prob_prefers(prompt, a, b) for annotator in panel]
    draws = list(combinations(range(len(probs)), min(voters, len(probs))))
    total = 0.0
    for draw in draws:
        k = len(draw)
        for votes in range(1 << k):  # every pattern of votes for a (bit set) or b
            p = 1.0
            for bit, i in enumerate(draw):
                p *= probs[i] if votes >> bit & 1 else 1 - probs[i]
            ayes = bin(votes).count("1")
            total += p * (1.0 if 2 * ayes > k else 0.5 if 2 * ayes == k else 0.0)
    return total / len(draws)


def label_preferences(ctx: DemoContext) -> None:
    """Write data/prefs_pairs.jsonl, data/prefs_rankings.jsonl, data/prefs_all.jsonl, data/prefs_heldout.jsonl."""
    data = ctx.out / "data"
    if (data / "prefs_all.jsonl").exists() and (data / "prefs_heldout.jsonl").exists():
        return
    task, cfg = ctx.task, ctx.config
    rng = random_for(ctx.seed, "panel")
    prompts = [r["prompt"] for r in task.prompts(cfg.n_pref_prompts, rng_seed=ctx.seed + 5, split="train")]
    started = time.time()
    # even prompts become voted pairs, odd ones rankings: a pair needs only two samples (half the
    # sampling of drawing K for every prompt and voting on two of them)
    pair_prompts, ranking_prompts = prompts[0::2], prompts[1::2]
    print(f"[labels] sampling {PAIR_SAMPLES} SFT responses for each of {len(pair_prompts)} pair prompts, "
          f"{K_RANKING} for each of {len(ranking_prompts)} ranking prompts and {PAIR_SAMPLES} for each of "
          f"{cfg.n_rm_eval_prompts} held-out ones, then the panel's votes", flush=True)
    pair_samples = iter(_sft_samples(ctx, pair_prompts, PAIR_SAMPLES, seed=ctx.seed + 12))
    ranking_samples = iter(_sft_samples(ctx, ranking_prompts, K_RANKING, seed=ctx.seed + 11))
    pairs, rankings, skipped = [], [], 0
    for n, prompt in enumerate(prompts):
        responses = next(pair_samples if n % 2 == 0 else ranking_samples)
        distinct = list(dict.fromkeys(r for r in responses if r.strip()))
        if n % 2 == 0:
            pair = _distinct_pair(distinct)
            if pair is None:
                skipped += 1
                continue
            pairs.append(_vote(task, prompt, *pair, rng))
        else:
            if len(distinct) < 2:
                skipped += 1
                continue
            annotator = rng.choice(task.panel)
            order = annotator.rank(prompt, distinct, rng)
            rankings.append({"prompt": prompt, "responses": distinct, "ranking": order, "annotator": annotator.name})
    # DPO and friends read pairs: the rankings contribute their best-vs-worst pair
    ranked_pairs = [{"prompt": r["prompt"], "chosen": r["responses"][r["ranking"][0]],
                     "rejected": r["responses"][r["ranking"][-1]], "annotator": r["annotator"]} for r in rankings]
    write_jsonl(pairs + ranked_pairs, data / "prefs_pairs.jsonl")
    write_jsonl(rankings, data / "prefs_rankings.jsonl")
    write_jsonl(pairs + rankings, data / "prefs_all.jsonl")

    # held-out pairs on eval prompts: gold and the panel both judge them
    eval_prompts = [r["prompt"] for r in task.prompts(cfg.n_rm_eval_prompts, rng_seed=ctx.seed + 6, split="eval")]
    held_samples = _sft_samples(ctx, eval_prompts, PAIR_SAMPLES, seed=ctx.seed + 13)
    held = []
    for prompt, responses in zip(eval_prompts, held_samples):
        pair = _distinct_pair(responses)
        if pair is None:
            continue
        record = _vote(task, prompt, *pair, rng)
        g_chosen, g_rejected = task.gold(prompt, record["chosen"]), task.gold(prompt, record["rejected"])
        if g_chosen == g_rejected:
            continue  # gold has no preference: neither the panel nor the model can be right
        record["gold_prefers_chosen"] = g_chosen > g_rejected
        better, worse = (record["chosen"], record["rejected"]) if g_chosen > g_rejected else (
            record["rejected"], record["chosen"])
        record["panel_majority_prob_gold"] = majority_prob(task.panel, prompt, better, worse)
        held.append(record)
    write_jsonl(held, data / "prefs_heldout.jsonl")
    print(f"[labels] {len(pairs)} voted pairs, {len(rankings)} rankings, {len(held)} held-out pairs "
          f"({time.time() - started:.0f} s)", flush=True)
    (data / "prefs_stats.json").write_text(json.dumps({
        "pairs": len(pairs), "rankings": len(rankings), "skipped_identical_samples": skipped,
        "heldout_pairs": len(held)}, indent=1))


def train_reward_model(ctx: DemoContext, budget: DemoStageConfig, *, resume: bool = False, name: str = "reward",
                       ensemble_size: int = 1) -> dict:
    """Train on prefs_all.jsonl into ``<run>/<name>`` (``ensemble_size`` members, member k on seed
    ``seed + k``); return the summary entry (accuracy vs gold next to the panel's).

    Calibration is measured against the panel's soft labels (``label_prob``, its vote share) of the
    held-out pairs: ``ece`` of σ(r_c − r_r), ``ece_calibrated`` after temperature scaling (T
    cross-fitted on two halves of the held-out pairs), and ``temperature``, fitted on all of them and
    stored with the model (see :func:`rlhfkit.train.reward_model.evaluate_reward`)."""
    from rlhfkit.data.records import load_records
    from rlhfkit.models.reward_model import load_scorer
    from rlhfkit.train.reward_model import RewardConfig, run_reward
    from rlhfkit.train.sft import OptimConfig

    out = ctx.out / name
    if not (out / "final" / "config.json").exists() and not (out / "final" / "ensemble.json").exists():
        config = RewardConfig(model=str(ctx.sft), data=str(ctx.out / "data" / "prefs_all.jsonl"),
                              eval_data=str(ctx.out / "data" / "prefs_heldout.jsonl"), output_dir=str(out),
                              max_length=128, ties="skip", reference_data=str(ctx.out / "data" / "sft.jsonl"),
                              batch_size=budget.batch_size, max_steps=budget.max_steps,
                              optim=OptimConfig(learning_rate=budget.learning_rate, warmup_ratio=0.05),
                              precision=ctx.precision, save_every=100, seed=ctx.seed, ensemble_size=ensemble_size,
                              lm_loss_coef=ctx.config.reward_lm_loss_coef)
        run_reward(config, resume=resume)
    held = load_records(ctx.out / "data" / "prefs_heldout.jsonl", "pairwise").records
    scorer = load_scorer(out / "final")
    chosen = scorer.score([r["prompt"] for r in held], [r["chosen"] for r in held]).tolist()
    rejected = scorer.score([r["prompt"] for r in held], [r["rejected"] for r in held]).tolist()
    # the model agrees with gold when it ranks the pair the way gold does
    model_vs_gold = [(c > r) == g["gold_prefers_chosen"] for c, r, g in zip(chosen, rejected, held)]
    panel_vs_gold = [g["gold_prefers_chosen"] for g in held]  # the panel's majority picked "chosen"
    report = json.loads((out / "eval.json").read_text())
    return {
        "accuracy_vs_gold": sum(model_vs_gold) / max(len(held), 1),
        "accuracy_vs_gold_by_separation": _by_separation(ctx.task, held, model_vs_gold),
        "panel_mean_accuracy_vs_gold": sum(panel_mean_prefers_gold(ctx.task, g) for g in held) / max(len(held), 1),
        "panel_accuracy_vs_gold": sum(panel_vs_gold) / max(len(held), 1),
        "panel_accuracy_vs_gold_expected": sum(g["panel_majority_prob_gold"] for g in held) / max(len(held), 1),
        "accuracy_vs_panel": report.get("accuracy"),
        "ece": report.get("ece"),
        "ece_calibrated": report.get("ece_calibrated"),
        "temperature": report.get("temperature"),
        "length_correlation": report.get("length_correlation"),
        "accuracy_per_annotator": report.get("accuracy_per_annotator"),
        "heldout_pairs": len(held),
        "ensemble_size": scorer.ensemble_size,
    }


def separated_by(task, record: dict) -> str:
    """What gold separates a held-out pair by: "correctness" when its ``correct`` term differs between the
    two responses (a right against a wrong answer, stance or refusal), else "style" (politeness, length, ...)."""
    correct = [task.gold_attributes(record["prompt"], record[side])["correct"] for side in ("chosen", "rejected")]
    return "correctness" if correct[0] != correct[1] else "style"


def _by_separation(task, held: list[dict], right: list[bool]) -> dict[str, float]:
    """Accuracy vs gold on the held-out pairs gold separates by correctness and on the rest."""
    groups: dict[str, list[bool]] = {"correctness": [], "style": []}
    for record, ok in zip(held, right):
        groups[separated_by(task, record)].append(ok)
    return {name: sum(oks) / len(oks) for name, oks in groups.items() if oks}


def panel_mean_prefers_gold(task, record: dict) -> bool:
    """Whether the panel's mean Bradley–Terry probability prefers gold's choice of a held-out pair: the
    pair's answer a reward model would give with unlimited labels of this panel (pairs and rankings
    drawn from all annotators)."""
    better, worse = (record["chosen"], record["rejected"]) if record["gold_prefers_chosen"] else (
        record["rejected"], record["chosen"])
    probs = [annotator.prob_prefers(record["prompt"], better, worse) for annotator in task.panel]
    return sum(probs) / len(probs) > 0.5


def ensemble_section(entry: dict) -> str:
    """Markdown: the reward-model ensemble's accuracy next to the panel's ceiling."""
    return ("## Reward-model ensemble\n\n"
            f"{entry.get('ensemble_size')} reward models on the same labels (member k trained with seed + k), "
            f"their mean on the {entry.get('heldout_pairs')} held-out pairs: accuracy vs gold "
            f"{entry['accuracy_vs_gold']:.3f} (the panel's {entry['panel_accuracy_vs_gold']:.3f}), "
            f"accuracy vs the panel {entry.get('accuracy_vs_panel') or float('nan'):.3f}.\n")
