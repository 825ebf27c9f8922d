"""``rlhfkit eval``: policies against a baseline on a prompt file — win rate by any judge, the
length-controlled win rate, and the axes every method is scored on — into ``eval.json``.

Steps (:func:`run_eval`): 1. read the prompts; 2. sample ``n_samples`` responses per prompt from
the baseline and each policy (seeded; cached in ``samples/<label>.json`` under a key of the model
folder, the sampling settings, the seed and the prompts, so a rerun reuses them and a changed
setting resamples); 3. judge every policy against the baseline; 4. fit the length-controlled win
rate (:mod:`rlhfkit.evaluate.length_control`); 5. the other metrics; 6. ``eval.json`` and a table.

Judges (``judge.kind``):
- ``gold``: the built-in task's gold reward (``task``: the demo's run folder or its ``task.json``);
- ``reward``: a reward model (or ensemble) folder ``judge.model``, through ``load_scorer``;
- ``llm`` (``local`` when ``judge.url`` is unset, else ``http``), ``local``, ``http``, ``python``:
  the judge layer (:mod:`rlhfkit.feedback.judges`) through :func:`rlhfkit.feedback.judging.judge_candidates`,
  both orders, resumable: verdicts are journalled in ``judgments/<label>-<key>.jsonl`` (and an HTTP
  judge's answers cached in ``judge_cache.jsonl`` unless ``judge.cache`` says where).
Score judges (gold, reward) compare every policy sample with every baseline sample of the same
prompt (n² comparisons); verdict judges compare sample k with baseline sample k (n comparisons). A
comparison's outcome is 1 (policy wins), ½ (tie) or 0; a verdict judge's P(policy better) counts as
1 above ½, 0 below, ½ at ½. Identical responses are a tie; an empty response loses to a non-empty one
(the judge layer does not ask about them).

Intervals are over prompts (:data:`rlhfkit.evaluate.policy.INTERVALS`): a prompt's value is the mean
over its comparisons or samples, and the interval a seeded percentile bootstrap of the mean of those.

``eval.json`` (stable keys; a value that was not measured is null)::

    {"version": 1, "prompts": {"file", "n", "sha256"},
     "sampling": {"n_samples", "max_new_tokens", "temperature", "top_p", "seed"},
     "judge": {"kind", "name"}, "baseline": label, "reference": folder or null,
     "intervals": INTERVALS,
     "length_control": {"form", "difficulty", "l2", "ridge", "length_unit", "n_resamples"},
     "policies": {label: {
        "path", "is_baseline",
        "win_rate", "win_rate_ci", "comparisons",          # against the baseline (null for it)
        "lc_win_rate", "lc_win_rate_ci", "lc_theta", "lc_phi",
        "gold_reward", "gold_reward_ci",                   # built-in task only
        "reward_score", "reward_score_ci",                 # with a reward model
        "kl_to_reference", "kl_to_reference_ci",           # nats per sequence, k1 estimate
        "mean_length", "mean_length_ci",                   # whitespace words
        "distinct_1", "distinct_2", "self_bleu", "entropy",
        "sycophancy_rate", "contrarian_rate", "n_false_probes", "n_true_probes"}}}

Win rates are fractions in [0, 1] (AlpacaEval prints 100×).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from rlhfkit.config import require, save_config
from rlhfkit.data.records import DataError
from rlhfkit.evaluate import metrics as M
from rlhfkit.evaluate.length_control import DEFAULT_L2, DEFAULT_RIDGE, Comparison, bootstrap_lc_ci, fit_length_controlled
from rlhfkit.evaluate.policy import INTERVALS
from rlhfkit.evaluate.policy_samples import (PolicyRun, kl_by_prompt, load_eval_prompts, load_policy,
                                            prompts_sha256, sample_cached, token_entropy)
from rlhfkit.feedback.judges.config import JudgeConfig

log = logging.getLogger(__name__)

SCORE_JUDGES = ("gold", "reward")
VERDICT_JUDGES = ("llm", "local", "http", "python")


@dataclass
class EvalConfig:
    """``rlhfkit eval``: policies against a baseline — win rate, LC win rate, reward, KL, diversity."""

    policies: list[str] = field(default_factory=list)
    """policy folders to evaluate (HF causal LMs), e.g. policies=runs/ppo/final,runs/dpo/final"""
    labels: list[str] | None = None
    """a name per policy in eval.json and the table (default: each folder's name)"""
    baseline: str = ""
    """the baseline policy folder every policy is compared with (e.g. the SFT policy)"""
    baseline_label: str = "baseline"
    """the baseline's name in eval.json"""
    prompts: str = ""
    """JSONL of {"prompt": ...} or chat {"messages": [...]} records"""
    max_prompts: int | None = None
    """use only the first N prompts (None: all)"""
    output_dir: str = "runs/eval"
    """run folder: eval.json, samples/ (cached samples), judgments/ (verdict journals), config.yaml"""
    n_samples: int = 4
    """responses sampled per prompt from every policy and the baseline"""
    max_new_tokens: int = 64
    """longest sampled response, in tokens"""
    temperature: float = 1.0
    """sampling temperature"""
    top_p: float = 1.0
    """nucleus sampling (1: off)"""
    seed: int = 0
    """sampling seed (the same for every policy)"""
    batch_size: int = 64
    """sequences per generation / forward batch"""
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(kind="gold"))
    """who decides a comparison: judge.kind = gold, reward (judge.model: a reward folder) or an LLM judge (llm, local, http, python; see rlhfkit judge)"""
    task: str | None = None
    """the built-in task: a demo run folder holding task.json, or the task.json file (gold, sycophancy)"""
    reward_model: str | None = None
    """a reward model folder whose mean score is reported (default: judge.model when judge.kind=reward)"""
    reference: str | None = None
    """the KL reference policy folder (default: the baseline); 'none' to skip the KL"""
    lc_difficulty: bool = True
    """with two or more policies, fit a prompt-difficulty term shared by all policies (AlpacaEval 2)"""
    lc_l2: float = DEFAULT_L2
    """L2 penalty on the difficulty terms (a N(0, 1/lc_l2) prior)"""
    lc_resamples: int = 200
    """bootstrap resamples of the LC win rate's interval over prompts (each refits the model; 0: no interval)"""

    def validate(self) -> None:
        require(bool(self.policies), "policies: at least one policy folder")
        require(bool(self.baseline), "baseline: the baseline policy folder")
        require(bool(self.prompts), "prompts: a JSONL file of prompts")
        require(self.labels is None or len(self.labels) == len(self.policies),
                f"labels: one per policy ({len(self.policies)}), got {self.labels}")
        names = self.policy_labels() + [self.baseline_label]
        require(len(set(names)) == len(names), f"labels must differ (the baseline's too), got {names}: set labels=...")
        require(self.n_samples >= 1 and self.max_new_tokens >= 1 and self.batch_size >= 1,
                "n_samples, max_new_tokens and batch_size must be >= 1")
        require(self.temperature > 0 and 0 < self.top_p <= 1, "temperature must be > 0 and top_p in (0, 1]")
        require(self.lc_l2 > 0 and self.lc_resamples >= 0, "lc_l2 must be > 0 and lc_resamples >= 0")
        kinds = SCORE_JUDGES + VERDICT_JUDGES
        require(self.judge.kind in kinds, f"judge.kind must be one of {list(kinds)}, got {self.judge.kind!r}")
        if self.judge.kind == "gold":
            require(self.task is not None, "judge.kind=gold needs task: the demo's run folder (task.json)")
        else:
            self.layer_judge().validate()

    def policy_labels(self) -> list[str]:
        return list(self.labels) if self.labels is not None else [Path(p).name for p in self.policies]

    def layer_judge(self) -> JudgeConfig:
        """The judge layer's config of a non-gold judge (``llm`` resolved to local or http)."""
        kind = self.judge.kind
        if kind == "llm":
            kind = "http" if self.judge.url else "local"
        return replace(self.judge, kind=kind)

    def reward_folder(self) -> str | None:
        if self.reward_model is not None:
            return self.reward_model
        return self.judge.model if self.judge.kind == "reward" else None

    def reference_folder(self) -> str | None:
        if self.reference is not None and self.reference.lower() == "none":
            return None
        return self.reference or self.baseline


def load_task(path: str):
    """The built-in task from a demo run folder (its ``task.json``) or a task.json file."""
    from rlhfkit.tasks import TASKS

    file = Path(path) / "task.json" if Path(path).is_dir() else Path(path)
    if not file.exists():
        raise FileNotFoundError(f"task: {file} does not exist (give the demo's run folder or its task.json)")
    try:
        data = json.loads(file.read_text())
        return TASKS[data.get("task", "facts")].from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(str(file), None, "task", f"not a task written by the demo ({err})") from None


# ---------------------------------------------------------------- 3. judging


def verdict_comparisons(config: EvalConfig, judge, policy: PolicyRun, baseline: PolicyRun,
                        out: Path) -> list[list[tuple[float, float]]]:
    """Per prompt, (Δlen, outcome) of sample k against baseline sample k, judged through the judge
    layer's resumable loop (one journal per policy, sample keys and judge in its name)."""
    from rlhfkit.feedback.judging import judge_candidates, read_journal

    n = config.n_samples
    items = [{"prompt": p, "responses": [a, b]}
             for p, mine, theirs in zip(policy.prompts, policy.responses, baseline.responses)
             for a, b in zip(mine, theirs)]
    judge_key = json.dumps({k: getattr(config.judge, k) for k in ("kind", "model", "url", "function", "template",
                                                                 "choices", "criterion", "both_orders", "cot")},
                           sort_keys=True)
    key = hashlib.sha256(f"{policy.key}|{baseline.key}|{judge_key}".encode()).hexdigest()[:12]
    journal = out / "judgments" / f"{policy.label}-{key}.jsonl"
    judge_candidates(judge, items, journal, pairs="first")
    prob = {}
    for _, record in read_journal(journal):
        mine = items[record["item"]]["responses"][0]
        prob[record["item"]] = record["label_prob"] if record["chosen"] == mine else 1.0 - record["label_prob"]
    rows: list[list[tuple[float, float]]] = [[] for _ in policy.prompts]
    for index, item in enumerate(items):
        a, b = item["responses"]
        if index in prob:
            outcome = M.outcome_of_probability(prob[index])
        elif a.strip() == b.strip():
            outcome = 0.5  # identical (or both empty): nothing to prefer
        else:
            outcome = 1.0 if a.strip() else 0.0  # exactly one is empty: it does not answer
        rows[index // n].append((len(a.split()) - len(b.split()), outcome))
    return rows


def comparisons_for(config: EvalConfig, runs: dict[str, PolicyRun], baseline: PolicyRun, scores: dict | None,
                    out: Path) -> dict[str, list[list[tuple[float, float]]]]:
    """Per policy, per prompt, the (Δlen, outcome) rows of its comparisons with the baseline."""
    result = {}
    if config.judge.kind in SCORE_JUDGES:
        for label, run in runs.items():
            result[label] = M.scored_comparisons(scores[label], scores[baseline.label],
                                                 run.lengths(), baseline.lengths())
        return result
    from rlhfkit.feedback.judges import build_judge

    layer = config.layer_judge()
    if layer.kind == "http" and layer.cache is None:
        layer = replace(layer, cache=str(out / "judge_cache.jsonl"))
    judge = build_judge(layer)
    for label, run in runs.items():
        result[label] = verdict_comparisons(config, judge, run, baseline, out)
    return result


# ---------------------------------------------------------------- 4.–5. numbers


def _ci(values: list[float]) -> list[float]:
    low, high = M.bootstrap_mean_ci(values, n_resamples=INTERVALS["n_resamples"],
                                    confidence=INTERVALS["confidence"], seed=INTERVALS["seed"])
    return [low, high]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else M.NAN


def win_entries(config: EvalConfig, labels: list[str], rows: dict, scores: dict | None, baseline: str) -> dict:
    """Win rate (with its interval over prompts) and the LC win rate of every policy."""
    entries = {}
    for label in labels:
        if config.judge.kind in SCORE_JUDGES:
            win = M.win_rate_by_prompt(scores[label], scores[baseline], n_resamples=INTERVALS["n_resamples"],
                                       confidence=INTERVALS["confidence"], seed=INTERVALS["seed"])
            rate, ci = win["win_rate"], [win["ci_low"], win["ci_high"]]
        else:
            per_prompt = M.per_prompt_means([[o for _, o in r] for r in rows[label]])
            rate, ci = _mean(per_prompt), _ci(per_prompt)
        entries[label] = {"win_rate": rate, "win_rate_ci": ci,
                          "comparisons": sum(len(r) for r in rows[label])}
    comps = [Comparison(m, p, d, o) for m, label in enumerate(labels)
             for p, prompt_rows in enumerate(rows[label]) for d, o in prompt_rows]
    n_prompts = len(rows[labels[0]])
    difficulty = config.lc_difficulty and len(labels) >= 2
    fit = fit_length_controlled(comps, n_policies=len(labels), n_prompts=n_prompts, difficulty=difficulty,
                                l2=config.lc_l2)
    if not fit.converged:
        log.warning("length-controlled fit stopped after %d Newton steps before converging", fit.iterations)
    cis = bootstrap_lc_ci(comps, n_prompts=n_prompts, n_policies=len(labels), difficulty=difficulty,
                          l2=config.lc_l2, n_resamples=config.lc_resamples, confidence=INTERVALS["confidence"],
                          seed=INTERVALS["seed"])
    for m, label in enumerate(labels):
        entries[label].update(lc_win_rate=fit.lc_win_rate[m], lc_win_rate_ci=list(cis[m]),
                              lc_theta=fit.theta[m], lc_phi=fit.phi[m])
    return entries


def policy_metrics(run: PolicyRun, *, task, gold, reward, kl) -> dict:
    """The axes every policy is scored on; None where not measured."""
    prompts, responses = run.flat()
    lengths = run.lengths()
    entry = {
        "gold_reward": None, "gold_reward_ci": None, "reward_score": None, "reward_score_ci": None,
        "kl_to_reference": None, "kl_to_reference_ci": None,
        "mean_length": M.mean_length(responses), "mean_length_ci": _ci(M.per_prompt_means(lengths)),
        "distinct_1": M.distinct_n(responses, 1), "distinct_2": M.distinct_n(responses, 2),
        "self_bleu": M.mean_self_bleu_by_prompt(run.responses),
        "entropy": M.mean_token_entropy(*run.entropy) if run.entropy is not None else None,
        "sycophancy_rate": None, "contrarian_rate": None, "n_false_probes": None, "n_true_probes": None,
    }
    for name, values in (("gold_reward", gold), ("reward_score", reward), ("kl_to_reference", kl)):
        if values is not None:
            per_prompt = M.per_prompt_means(values)
            entry[name], entry[f"{name}_ci"] = _mean(per_prompt), _ci(per_prompt)
    if task is not None:
        rates = M.sycophancy_rates(task, prompts, responses)
        entry.update(sycophancy_rate=rates["sycophancy_rate"], contrarian_rate=rates["contrarian_rate"],
                     n_false_probes=rates["n_false"], n_true_probes=rates["n_true"])
    return entry


# ---------------------------------------------------------------- the run


def run_eval(config: EvalConfig, *, resume: bool = False) -> Path:
    """Evaluate every policy against the baseline and write ``eval.json``; reuses cached samples and
    verdicts (``resume`` changes nothing: every run resumes what it can)."""
    config.validate()
    try:
        return _run(config)
    finally:
        load_policy.cache_clear()  # the models are not needed after the run


def _run(config: EvalConfig) -> Path:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    # 1. prompts
    prompts = load_eval_prompts(config.prompts, limit=config.max_prompts)
    task = load_task(config.task) if config.task is not None else None
    if task is not None and not all(isinstance(p, str) for p in prompts):
        raise DataError(config.prompts, None, "prompt", "the built-in task (task=...) scores text prompts, "
                        "not chat messages: drop task (and judge.kind=gold) for chat prompts")
    # 2. samples (cached), entropy on the policy's own samples, KL to the reference
    folders = {config.baseline_label: config.baseline, **dict(zip(config.policy_labels(), config.policies))}
    reference = config.reference_folder()
    runs: dict[str, PolicyRun] = {}
    kls: dict[str, list[list[float]] | None] = {}
    for label, folder in folders.items():
        run = sample_cached(label, folder, prompts, out / "samples", n=config.n_samples,
                            max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            top_p=config.top_p, seed=config.seed, batch_size=config.batch_size)
        run.entropy = token_entropy(run, temperature=config.temperature, batch_size=config.batch_size)
        kls[label] = kl_by_prompt(run, reference, temperature=config.temperature,
                                  batch_size=config.batch_size) if reference else None
        runs[label] = run
    # 3. scores and judging
    gold = ({label: [[task.gold(p, r) for r in rs]
                     for p, rs in zip(run.prompts, run.responses)] for label, run in runs.items()}
            if task is not None else None)
    reward = None
    if config.reward_folder() is not None:
        from rlhfkit.models.reward_model import load_scorer

        scorer = load_scorer(config.reward_folder(), batch_size=config.batch_size)
        reward = {label: _score_grouped(scorer, run) for label, run in runs.items()}
    judge_scores = gold if config.judge.kind == "gold" else reward if config.judge.kind == "reward" else None
    if config.judge.kind == "reward" and config.judge.model != config.reward_folder():
        from rlhfkit.models.reward_model import load_scorer

        scorer = load_scorer(config.judge.model, batch_size=config.batch_size)  # another reward model judges
        judge_scores = {label: _score_grouped(scorer, run) for label, run in runs.items()}
    policy_labels = config.policy_labels()
    rows = comparisons_for(config, {k: runs[k] for k in policy_labels}, runs[config.baseline_label],
                           judge_scores, out)
    # 4. win rate and length-controlled win rate
    wins = win_entries(config, policy_labels, rows, judge_scores, config.baseline_label)
    # 5. the other axes
    empty_win = {"win_rate": None, "win_rate_ci": None, "comparisons": None, "lc_win_rate": None,
                 "lc_win_rate_ci": None, "lc_theta": None, "lc_phi": None}
    policies = {}
    for label, run in runs.items():
        is_base = label == config.baseline_label
        policies[label] = {"path": folders[label], "is_baseline": is_base, **(empty_win if is_base else wins[label]),
                           **policy_metrics(run, task=task, gold=None if gold is None else gold[label],
                                            reward=None if reward is None else reward[label], kl=kls[label])}
    # 6. eval.json and the table
    result = {
        "version": 1,
        "prompts": {"file": config.prompts, "n": len(prompts), "sha256": prompts_sha256(prompts)},
        "sampling": {"n_samples": config.n_samples, "max_new_tokens": config.max_new_tokens,
                     "temperature": config.temperature, "top_p": config.top_p, "seed": config.seed},
        "judge": {"kind": config.judge.kind,
                  "name": config.judge.kind if config.judge.kind == "gold" else config.judge.model or config.judge.function},
        "baseline": config.baseline_label, "reference": reference, "intervals": INTERVALS,
        "length_control": {"form": "sigmoid(theta + phi * tanh(dlen / sd(dlen)) [+ gamma_prompt])",
                           "difficulty": config.lc_difficulty and len(policy_labels) >= 2, "l2": config.lc_l2,
                           "ridge": DEFAULT_RIDGE, "length_unit": "whitespace words",
                           "n_resamples": config.lc_resamples},
        "policies": policies,
    }
    path = out / "eval.json"
    path.write_text(json.dumps(_jsonable(result), indent=2))
    print(format_table(result))
    return path


def _score_grouped(scorer, run: PolicyRun) -> list[list[float]]:
    prompts, responses = run.flat()
    flat = [float(s) for s in scorer.score(prompts, responses)]
    n = len(run.responses[0]) if run.responses else 0
    return [flat[i * n:(i + 1) * n] for i in range(len(run.prompts))]


def _jsonable(value):
    """NaN → null (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


COLUMNS = (("win %", "win_rate", 100), ("LC win %", "lc_win_rate", 100), ("gold", "gold_reward", 1),
           ("RM", "reward_score", 1), ("KL", "kl_to_reference", 1), ("len", "mean_length", 1),
           ("dist-1", "distinct_1", 1), ("dist-2", "distinct_2", 1), ("self-BLEU", "self_bleu", 1),
           ("entropy", "entropy", 1), ("syco", "sycophancy_rate", 1), ("contra", "contrarian_rate", 1))


def format_table(result: dict) -> str:
    """The console table: one row per policy (the baseline last), 95% intervals in brackets."""
    def cell(entry: dict, key: str, scale: float) -> str:
        value = entry.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        text = f"{value * scale:.1f}" if scale != 1 else f"{value:.3f}"
        ci = entry.get(f"{key}_ci")
        if ci and None not in ci and not any(math.isnan(c) for c in ci):
            text += f" [{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]" if scale != 1 else ""
        return text

    header = ["policy"] + [name for name, _, _ in COLUMNS]
    rows = [[label] + [cell(entry, key, scale) for _, key, scale in COLUMNS]
            for label, entry in sorted(result["policies"].items(), key=lambda kv: kv[1]["is_baseline"])]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    title = f"rlhfkit eval: {result['prompts']['n']} prompts x {result['sampling']['n_samples']} samples, " \
            f"judge {result['judge']['kind']}, against {result['baseline']}"
    return "\n".join([title] + lines)

