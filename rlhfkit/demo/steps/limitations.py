"""Demo step: RLHF's limitations, measured on the run (after every method has trained).

1. **Reward over-optimisation** (Gao et al. 2022): proxy and gold reward of each RL step's training
   samples against d = √KL to SFT (``objective/kl``: the mean per-response KL of that step's samples)
   for PPO with and without the KL penalty, Gao et al.'s RL form fitted to the *gain* in gold over
   step 1 (they fit the difference from the initial policy), and where the fitted gold peaks; and a
   best-of-n curve: 16 SFT samples on each of (up to) 100 eval prompts, scored by the reward model
   (proxy) and gold, best-of-n for n = 1…16 by the unbiased estimator of
   :func:`rlhfkit.evaluate.overoptimization.best_of_n_expected`, KL_bon(n) = log n − (n − 1)/n, and
   the best-of-n form fitted to the gain over n = 1.
2. **Labelling cost**: a Bradley–Terry *linear head on frozen SFT features* (not the full reward
   model: retraining that per label budget would cost minutes) trained on growing sets of the panel's
   labelled pairs (``data/prefs_pairs.jsonl``), random vs the labelling app's uncertainty sampling,
   scored against gold on the held-out pairs (:mod:`rlhfkit.evaluate.labelling_cost`).
3. **Annotator disagreement**: every annotator of the task's panel labels every held-out pair once
   (seeded); the panel's Krippendorff α over those labels, each annotator's agreement with gold and
   the reward model's accuracy against each annotator.
4. The reward model's reliability bins on the held-out pairs (for the report's diagram) and the
   training curves of every online method (for its plot).

Everything lands in ``<run>/limitations/limitations.json`` (reused while it is newer than the reward
model and every RL run's metrics) and in ``summary.json`` under ``limitations``.

What lives here: the measurements' plumbing on the demo's folders. What does not: the maths
(``rlhfkit.evaluate.overoptimization``, ``labelling_cost``, ``plots.reliability_bins``, the
agreement coefficients in ``rlhfkit.feedback.agreement``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rlhfkit.demo.context import DemoContext, random_for

NAMES = ("limitations",)
RL_METHODS = ("ppo", "ppo_no_kl", "grpo", "rloo")
OVEROPT_METHODS = ("ppo", "ppo_no_kl")
BON_NS = (1, 2, 4, 8, 16)
BON_PROMPTS = 100
"""eval prompts of the best-of-n curve (16 SFT samples each; 1,600 samples take ~8 s on one busy core)"""
POOL_MAX = 1024
"""at most this many labelled pairs in the labelling-cost pool (a seeded subset of prefs_pairs.jsonl):
one feature pass costs ~3–9 ms per response on the demo's 2 CPU cores, and the curve flattens by ~1,000"""
HELD_MAX = 500
"""at most this many held-out pairs score the labelling-cost curve (a seeded subset)"""
REPEATS = 3
"""labelling-cost curves per strategy (seeds of the random order and of active learning's seed batch), averaged"""
BATCH = 512
"""sequences per forward call (generation, scoring, features): the tiny model's CPU cost is mostly per call"""


def _cache_fresh(path: Path, ctx: DemoContext) -> bool:
    if not path.exists():
        return False
    inputs = [ctx.reward / "config.json" if ctx.reward else None, ctx.out / "data" / "prefs_heldout.jsonl"]
    inputs += [ctx.out / name / "metrics.jsonl" for name in RL_METHODS]
    return all(path.stat().st_mtime >= p.stat().st_mtime for p in inputs if p is not None and p.exists())


def run(ctx: DemoContext) -> dict:
    """Measure (or reuse) everything above; returns the ``summary["limitations"]`` dict."""
    path = ctx.out / "limitations" / "limitations.json"
    if _cache_fresh(path, ctx):
        return json.loads(path.read_text())
    timings: dict[str, float] = {}
    result: dict = {}

    t = time.time()
    result["training_curves"] = training_curves(ctx.out)
    result["overoptimization"] = {"rl": rl_overoptimization(result["training_curves"])}
    if ctx.reward is not None:
        result["overoptimization"]["best_of_n"] = best_of_n(ctx)
    timings["overoptimization"] = time.time() - t

    if ctx.reward is not None and (ctx.out / "data" / "prefs_heldout.jsonl").exists():
        from rlhfkit.data.records import load_records
        from rlhfkit.models.reward_model import load_scorer

        held = load_records(ctx.out / "data" / "prefs_heldout.jsonl", "pairwise").records
        scorer = load_scorer(ctx.reward, batch_size=BATCH)
        prompts = [r["prompt"] for r in held]
        rewards = scorer.score(prompts + prompts, [r["chosen"] for r in held] + [r["rejected"] for r in held]).tolist()
        margins = [c - r for c, r in zip(rewards[: len(held)], rewards[len(held):])]

        t = time.time()
        result["reliability"] = reliability(held, margins)
        result["annotators"] = annotators(ctx, held, margins)
        timings["annotators"] = time.time() - t

        t = time.time()
        result["labelling_cost"] = labelling_cost(ctx, held)
        timings["labelling_cost"] = time.time() - t
    result["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- 1. over-optimisation
def training_curves(out: Path) -> dict[str, dict[str, list[float]]]:
    """{method: {"step", "proxy", "gold", "kl"}} of every online method that logged gold."""
    from rlhfkit.demo.steps.rl import read_curve

    curves = {}
    for name in RL_METHODS:
        rows = read_curve(out / name)
        if rows:
            curves[name] = {key: [r[key] for r in rows] for key in ("step", "proxy", "gold", "kl")}
    return curves


def rl_overoptimization(curves: dict[str, dict[str, list[float]]]) -> dict[str, dict]:
    """Per PPO run: d = √KL, proxy and gold gains over step 1, and the RL-form fit to the gold gain."""
    from rlhfkit.evaluate.overoptimization import fit_rl_form

    out = {}
    for name in OVEROPT_METHODS:
        c = curves.get(name)
        if not c:
            continue
        d = [math.sqrt(max(k, 0.0)) for k in c["kl"]]  # a k1 estimate can dip below 0 by noise
        gold_gain = [g - c["gold"][0] for g in c["gold"]]
        entry = {"d": d, "proxy_gain": [p - c["proxy"][0] for p in c["proxy"]], "gold_gain": gold_gain,
                 "gold_start": c["gold"][0], "proxy_start": c["proxy"][0]}
        try:
            entry["fit"] = fit_rl_form(d, gold_gain)
        except ValueError as e:
            entry["fit"] = None
            entry["fit_error"] = str(e)
        out[name] = entry
    return out


def best_of_n(ctx: DemoContext) -> dict:
    """Best-of-n from SFT on the eval prompts: proxy and gold per n, and the BoN-form fit to the gold gain."""
    from rlhfkit.evaluate.overoptimization import best_of_n_curve, fit_bon_form
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.reward_model import load_scorer
    from rlhfkit.rollout.sample import generate_texts

    prompts = ctx.eval_prompts[:BON_PROMPTS]
    m = max(BON_NS)
    # large batches: on a CPU the tiny model's cost is per forward call far more than per sequence
    responses = generate_texts(load_causal_lm(ctx.sft), load_tokenizer(ctx.sft), prompts, n=m,
                               max_new_tokens=ctx.config.max_new_tokens, seed=ctx.seed + 17, batch_size=BATCH)
    flat_p = [p for p, rs in zip(prompts, responses) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    proxy_flat = load_scorer(ctx.reward, batch_size=BATCH).score(flat_p, flat_r).tolist()
    gold_flat = ctx.task.gold_batch(flat_p, flat_r)
    proxy = [proxy_flat[i * m:(i + 1) * m] for i in range(len(prompts))]
    gold = [gold_flat[i * m:(i + 1) * m] for i in range(len(prompts))]
    rows = best_of_n_curve(proxy, gold, BON_NS)
    for r in rows:
        r["gold_gain"] = r["gold"] - rows[0]["gold"]
        r["proxy_gain"] = r["proxy"] - rows[0]["proxy"]
    entry = {"prompts": len(prompts), "samples_per_prompt": m, "rows": rows}
    try:
        entry["fit"] = fit_bon_form([r["d"] for r in rows], [r["gold_gain"] for r in rows])
    except ValueError as e:
        entry["fit"], entry["fit_error"] = None, str(e)
    return entry


# ----------------------------------------------------------------------------- 3. annotators, reliability
def reliability(held: list[dict], margins: list[float]) -> dict:
    """Reliability bins of σ(r_c − r_r) (no temperature) against the panel's vote share, both orders."""
    from rlhfkit.evaluate.metrics import pairwise_ece, sigmoid
    from rlhfkit.evaluate.plots import reliability_bins

    probs = [sigmoid(m) for m in margins]
    labels = [float(r.get("label_prob", 1.0)) for r in held]
    return {"bins": reliability_bins(probs, labels), "ece": pairwise_ece(probs, labels), "pairs": len(held)}


def annotators(ctx: DemoContext, held: list[dict], margins: list[float]) -> dict:
    """Every panel annotator labels every held-out pair once (seeded): α, agreement with gold, RM accuracy."""
    from rlhfkit.feedback.agreement import krippendorff_alpha

    rng = random_for(ctx.seed, "limitations-annotators")
    panel = ctx.task.panel
    prefers_chosen = {a.name: [a.label(r["prompt"], r["chosen"], r["rejected"], rng) == 0 for r in held] for a in panel}
    gold = [bool(r["gold_prefers_chosen"]) for r in held]
    model = [m > 0 for m in margins]

    def agree(x, y):
        return sum(a == b for a, b in zip(x, y)) / len(x) if x else float("nan")

    per = {name: {"agreement_with_gold": agree(labels, gold), "reward_model_accuracy": agree(model, labels),
                  "description": next(a.description for a in panel if a.name == name)}
           for name, labels in prefers_chosen.items()}
    units = [[prefers_chosen[a.name][i] for a in panel] for i in range(len(held))]
    return {"pairs": len(held), "krippendorff_alpha": krippendorff_alpha(units, level="nominal"),
            "per_annotator": per, "reward_model_accuracy_vs_gold": agree(model, gold)}


# ----------------------------------------------------------------------------- 2. labelling cost
def _features(model, tokenizer, prompts: list, responses: list, *, batch_size: int = 512, max_length: int = 128):
    """(N, H) last-token (EOS) hidden state of the final layer for each (prompt, response)."""
    import torch

    from rlhfkit.data.tokenize import encode_completion, encode_prompt, pad_batch

    seqs = [(encode_prompt(tokenizer, p) + encode_completion(tokenizer, p, r))[-max_length:]
            for p, r in zip(prompts, responses)]
    feats = torch.zeros(len(seqs), model.config.hidden_size)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths per batch: less padding
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], tokenizer.pad_token_id)
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]  # (B, T, H)
            last = mask.sum(1) - 1
            feats[idx] = hidden[torch.arange(len(idx)), last].float()
    return feats


def labelling_cost(ctx: DemoContext, held: list[dict]) -> dict:
    from rlhfkit.data.records import load_records
    from rlhfkit.evaluate.labelling_cost import budgets, labels_to_reach, learning_curve, mean_curve
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    pool = load_records(ctx.out / "data" / "prefs_pairs.jsonl", "pairwise").records
    if len(pool) > POOL_MAX:
        pool = random_for(ctx.seed, "labelling-cost-pool").sample(pool, POOL_MAX)
    if len(held) > HELD_MAX:
        held = random_for(ctx.seed, "labelling-cost-heldout").sample(held, HELD_MAX)
    model, tokenizer = load_causal_lm(ctx.sft), load_tokenizer(ctx.sft)
    prompts = [r["prompt"] for r in pool] * 2 + [r["prompt"] for r in held] * 2
    responses = ([r["chosen"] for r in pool] + [r["rejected"] for r in pool]
                 + [r["chosen"] for r in held] + [r["rejected"] for r in held])
    feats = _features(model, tokenizer, prompts, responses)
    n, h = len(pool), len(held)
    # standardise with the pool's statistics (unlabelled responses: no label leaks)
    mean, std = feats[: 2 * n].mean(0), feats[: 2 * n].std(0).clamp_min(1e-6)
    feats = (feats - mean) / std
    chosen, rejected = feats[:n], feats[n: 2 * n]
    eval_a, eval_b = feats[2 * n: 2 * n + h], feats[2 * n + h:]
    gold = [bool(r["gold_prefers_chosen"]) for r in held]
    sizes = budgets(n)
    # one small label set's accuracy is noisy (a lucky seed batch can sit near the final accuracy), so each
    # strategy's curve is the mean over REPEATS seeds of the random order / the active seed batch
    curves = {s: mean_curve([learning_curve(chosen, rejected, eval_a, eval_b, gold, sizes, strategy=s,
                                            seed=1000 * ctx.seed + r) for r in range(REPEATS)])
              for s in ("random", "active")}
    final = curves["random"][-1]["accuracy"]  # the whole pool: the same head for both strategies
    return {"pool": n, "heldout_pairs": h, "repeats": REPEATS,
            "feature": "SFT last-token hidden state (frozen), standardised",
            "head": "linear Bradley-Terry head, L2 1e-2, L-BFGS", "curves": curves, "final_accuracy": final,
            "labels_to_95pct": {s: labels_to_reach(c, final=final) for s, c in curves.items()}}
