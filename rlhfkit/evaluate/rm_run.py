"""``rlhfkit eval-rm``: a reward model, or an ensemble of several, on a preference set (issue 14 §2).

Reads RewardBench-style pairs (``prompt, chosen, rejected, subset``), RewardBench 2-style best-of-K
records (one chosen, several rejected) or rlhfkit's own pairwise records (``label_prob``,
``annotator``), scores every distinct (prompt, response) once per model through the one scoring API
(:class:`rlhfkit.models.reward_model.RewardScorer`: the stored normalisation bias applied), and writes
``eval_rm.json`` into ``output_dir`` with a short table on the console.

Every metric block (the model evaluated, each ensemble member, the ensemble's mean − λ·std) holds:

- ``accuracy``: share of pair records with r(chosen) > r(rejected) **strictly** — a tie counts as
  wrong, as in RewardBench; ``pairs`` and ``ties`` (pairs scored exactly equal) beside it;
- ``best_of_k_accuracy``: mean credit of the best-of-K records (1 when the chosen scores strictly
  above every rejected, 1/k when k responses tie for the top score, 0 otherwise), ``best_of_k_records``;
- ``accuracy_per_subset`` / ``accuracy_per_annotator``: ``{name: {"accuracy", "n"}}`` over record
  credits (a pair's strict 0/1, a best-of-K record's credit); a record with a list of annotators
  counts for each;
- ``ece`` with its ``reliability`` table (per equal-width bin: low, high, count, confidence,
  accuracy): P(chosen ≻ rejected) = σ(r_chosen − r_rejected) of every chosen × rejected pair, both
  orders counted (:func:`rlhfkit.evaluate.metrics.pairwise_ece`), the label the record's
  ``label_prob`` or 1 (``label_prob`` changes calibration only: accuracy always asks whether
  "chosen" scored higher, as RewardBench does); ``temperature`` (the folder's stored T, else null) and ``ece_temperature`` /
  ``reliability_temperature`` of σ(margin / T) (null without a stored T);
- ``length_correlation``: Pearson of reward against response length (``length_unit``: words or
  tokens) over every response of every record, and ``reward_mean`` over the same responses (a
  response in two records counts twice, as in the ``eval.json`` of ``rlhfkit reward``).

Top level: the metric block of the reward evaluated (the members' mean when there are several models:
several folders, or the members of one ensemble folder), ``members`` (each model's block, named by
its folder) and ``ensemble`` (null for one model; else ``members``, ``lambda``, ``mean_minus_std``:
accuracy, best-of-K, per-subset and ECE of mean − λ·std, ``reward_std_mean`` and
``pair_order_disagreement`` over every chosen × rejected pair, see
:func:`rlhfkit.evaluate.rm_metrics.ensemble_disagreement`). The temperature stored in one ensemble
folder's ensemble.json belongs to the mean; the mean of separate folders has none.
Undefined values (no pair records, no stored temperature) are null. Not here: the arithmetic
(:mod:`rlhfkit.evaluate.rm_metrics`) and the file readers (:mod:`rlhfkit.evaluate.rm_data`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config import require, save_config
from rlhfkit.evaluate import rm_metrics as R
from rlhfkit.evaluate.metrics import pairwise_ece, pearson
from rlhfkit.evaluate.rm_data import RMRecord, load_rm_records
from rlhfkit.models.precision import Precision

SCHEMA_VERSION = 1


@dataclass
class EvalRMConfig:
    """``rlhfkit eval-rm``: accuracy, best-of-K, calibration and length bias of reward models."""

    reward: str = ""
    """a reward model folder (an ensemble folder with ensemble.json counts its members as an ensemble)"""
    rewards: list[str] = field(default_factory=list)
    """several reward model folders, evaluated each alone and as an ensemble (rewards=a,b or rewards=[a,b]); instead of `reward`"""
    data: str = ""
    """preference set: JSONL, JSON, Parquet, CSV, a saved HF dataset folder or a hub name; pairwise (RewardBench: prompt, chosen, rejected, subset) or best-of-K (chosen, rejected a list) records"""
    split: str = "train"
    """split of an HF dataset"""
    subset_field: str = "subset"
    """column that names a record's category; accuracy is reported per value (absent: no per-subset table)"""
    ensemble_lambda: float = 1.0
    """λ of the uncertainty-penalised ensemble reward mean − λ·std, reported beside the plain mean"""
    n_bins: int = 10
    """equal-width bins of the reliability diagram and ECE"""
    length_unit: Literal["words", "tokens"] = "words"
    """response length for the reward–length correlation: whitespace words, or tokens of the first model's tokenizer"""
    batch_size: int = 16
    """responses per forward pass"""
    max_length: int | None = None
    """longest prompt + response in tokens (None: what the folder was trained with, else 512)"""
    precision: Precision = "auto"
    """auto (bf16 where the hardware runs it natively), fp32 or bf16"""
    max_records: int | None = None
    """evaluate only the first N records (None: all)"""
    hh_raw_text: bool = False
    """Anthropic HH transcripts stay raw text (by default they become chat messages when the tokenizer has a chat template)"""
    output_dir: str = "runs/eval_rm"
    """folder for eval_rm.json and config.yaml"""

    def folders(self) -> list[str]:
        return [self.reward] if self.reward else list(self.rewards)

    def validate(self) -> None:
        require(bool(self.reward) != bool(self.rewards), "give exactly one of reward=FOLDER or rewards=[FOLDER, ...]")
        require(bool(self.data), "data: a preference file (JSONL, JSON, Parquet, CSV) or an HF dataset")
        require(bool(self.subset_field), "subset_field must name a column")
        require(self.ensemble_lambda >= 0, "ensemble_lambda must be >= 0")
        require(self.n_bins >= 1, "n_bins must be >= 1")
        require(self.batch_size >= 1, "batch_size must be >= 1")
        require(self.max_length is None or self.max_length >= 2, "max_length must be >= 2")
        require(self.max_records is None or self.max_records >= 1, "max_records must be >= 1")


# ---------------------------------------------------------------- what gets scored


@dataclass
class Responses:
    """The distinct (prompt, response) items of a record set and where each record's responses sit."""

    prompts: list
    texts: list
    chosen: list[list[int]]  # per record, the item index of each chosen response
    rejected: list[list[int]]

    @classmethod
    def of(cls, records: list[RMRecord]) -> "Responses":
        index: dict[str, int] = {}
        prompts, texts, chosen, rejected = [], [], [], []

        def slot(prompt, response) -> int:
            key = json.dumps([prompt, response], sort_keys=True)
            if key not in index:
                index[key] = len(prompts)
                prompts.append(prompt)
                texts.append(response)
            return index[key]

        for r in records:
            chosen.append([slot(r.prompt, c) for c in r.chosen])
            rejected.append([slot(r.prompt, x) for x in r.rejected])
        return cls(prompts, texts, chosen, rejected)

    def occurrences(self) -> list[int]:
        """The item of every response of every record, in order (an item in two records appears twice)."""
        return [i for cs, xs in zip(self.chosen, self.rejected) for i in cs + xs]

    def pairs(self) -> list[tuple[int, int, int]]:
        """(record, chosen item, rejected item) of every chosen × rejected pair."""
        return [(k, c, x) for k, (cs, xs) in enumerate(zip(self.chosen, self.rejected)) for c in cs for x in xs]


def _text(response) -> str:
    return response if isinstance(response, str) else " ".join(m["content"] for m in response)


# ---------------------------------------------------------------- one block of metrics


def metric_block(records: list[RMRecord], items: Responses, rewards: list[float], *, lengths: list[int],
                 temperature: float | None, n_bins: int) -> dict[str, Any]:
    """Every metric of one reward (a model, or an ensemble's combined reward) from its reward of each
    distinct item; see the module docstring for the keys."""
    credits, pair_c, pair_r, bok = [], [], [], []
    for k, record in enumerate(records):
        chosen = [rewards[i] for i in items.chosen[k]]
        rejected = [rewards[i] for i in items.rejected[k]]
        if record.is_pair:
            pair_c.append(chosen[0])
            pair_r.append(rejected[0])
            credits.append(float(chosen[0] > rejected[0]))
        else:
            credits.append(R.best_of_k_credit(chosen, rejected))
            bok.append(credits[-1])
    seen = items.occurrences()
    margins, labels = [], []
    for k, c, x in items.pairs():
        margins.append(rewards[c] - rewards[x])
        labels.append(1.0 if records[k].label_prob is None else records[k].label_prob)
    block = {
        "accuracy": R.strict_accuracy(pair_c, pair_r),
        "pairs": len(pair_c),
        "ties": sum(c == r for c, r in zip(pair_c, pair_r)),
        "best_of_k_accuracy": sum(bok) / len(bok) if bok else math.nan,
        "best_of_k_records": len(bok),
        "accuracy_per_subset": R.accuracy_by_group(credits, [r.subset for r in records]),
        "accuracy_per_annotator": R.accuracy_by_group(credits, [r.annotator for r in records]),
        "ece": pairwise_ece(R.pairwise_probs(margins), labels, n_bins),
        "reliability": R.pairwise_reliability_bins(R.pairwise_probs(margins), labels, n_bins),
        "temperature": temperature,
        "ece_temperature": None,
        "reliability_temperature": None,
        "length_correlation": pearson([float(lengths[i]) for i in seen], [rewards[i] for i in seen]),
        "reward_mean": sum(rewards[i] for i in seen) / len(seen),
    }
    if temperature is not None:
        scaled = R.pairwise_probs(margins, temperature)
        block["ece_temperature"] = pairwise_ece(scaled, labels, n_bins)
        block["reliability_temperature"] = R.pairwise_reliability_bins(scaled, labels, n_bins)
    return block


def _json_safe(value):
    """NaN (an undefined metric) → null, so eval_rm.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------- folders


def stored_temperature(folder: str | Path) -> float | None:
    """The temperature a folder stores (ensemble.json for an ensemble folder, else config.json), or
    None when it stores none (then no ECE after temperature is reported)."""
    from rlhfkit.models.reward_model import TEMPERATURE_KEY

    folder = Path(folder)
    file = folder / "ensemble.json" if (folder / "ensemble.json").exists() else folder / "config.json"
    value = json.loads(file.read_text()).get(TEMPERATURE_KEY)
    return None if value is None else float(value)


@dataclass
class Member:
    name: str
    rewards: list[float]
    temperature: float | None


def score_folders(config: EvalRMConfig, items: Responses) -> tuple[list[Member], float | None, Any]:
    """Score every item with every model: (members, the temperature of the combined reward when one
    ensemble folder stores it, the first model's tokenizer)."""
    import torch

    from rlhfkit.models.reward_model import load_scorer, member_dirs
    from rlhfkit.train.run import autocast

    device = "cuda" if torch.cuda.is_available() else "cpu"
    members, tokenizer = [], None
    for folder in config.folders():
        path = Path(folder)
        if not (path / "config.json").exists() and not (path / "ensemble.json").exists():
            raise FileNotFoundError(f"{folder} is not a reward model folder (no config.json or ensemble.json)")
        scorer = load_scorer(path, max_length=config.max_length, batch_size=config.batch_size)
        scorer.models = [m.to(device) for m in scorer.models]
        tokenizer = scorer.tokenizer if tokenizer is None else tokenizer
        with autocast(config.precision):
            scores = scorer.member_scores(items.prompts, items.texts)  # (K, N)
        dirs = member_dirs(path)
        for k, row in enumerate(scores.tolist()):
            name = str(path) if len(dirs) == 1 else str(dirs[k])
            members.append(Member(name, row, stored_temperature(dirs[k]) if len(dirs) > 1 else stored_temperature(path)))
    folders = config.folders()
    combined_t = stored_temperature(folders[0]) if len(folders) == 1 and len(members) > 1 else None
    return members, combined_t, tokenizer


def response_lengths(items: Responses, unit: str, tokenizer) -> list[int]:
    if unit == "words":
        return [len(_text(t).split()) for t in items.texts]
    from rlhfkit.data.tokenize import encode_completion

    return [len(encode_completion(tokenizer, p, t)) for p, t in zip(items.prompts, items.texts)]


# ---------------------------------------------------------------- the run


def run_eval_rm(config: EvalRMConfig, *, resume: bool = False) -> Path:
    """Evaluate; returns the path of eval_rm.json. (``resume`` is accepted for the CLI: there is
    nothing to resume, scoring runs again.)"""
    from rlhfkit.data.layouts import LayoutOptions
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.precision import resolve_precision
    from rlhfkit.models.reward_model import member_dirs

    config.validate()
    config.precision = resolve_precision(config.precision, announce=True)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    first = config.folders()[0]
    if not Path(first).exists():
        raise FileNotFoundError(f"{first} does not exist")
    layout = LayoutOptions.for_tokenizer(load_tokenizer(member_dirs(first)[0]), hh_raw_text=config.hh_raw_text)
    records = load_rm_records(config.data, subset_field=config.subset_field, split=config.split, layout=layout,
                              limit=config.max_records)
    items = Responses.of(records)
    members, combined_t, tokenizer = score_folders(config, items)
    lengths = response_lengths(items, config.length_unit, tokenizer)

    def block(rewards, temperature):
        return metric_block(records, items, rewards, lengths=lengths, temperature=temperature, n_bins=config.n_bins)

    member_blocks = [{"reward": m.name, **block(m.rewards, m.temperature)} for m in members]
    if len(members) == 1:
        main, ensemble = dict(member_blocks[0]), None
        main.pop("reward")
    else:
        rows = [m.rewards for m in members]
        main = block(R.ensemble_rewards(rows), combined_t)
        pessimistic = block(R.ensemble_rewards(rows, ensemble_lambda=config.ensemble_lambda), None)
        ensemble = {"members": len(members), "lambda": config.ensemble_lambda,
                    "mean_minus_std": {k: pessimistic[k] for k in ("accuracy", "best_of_k_accuracy",
                                                                   "accuracy_per_subset", "ece")},
                    **R.ensemble_disagreement(rows, [(c, x) for _, c, x in items.pairs()])}
    report = {"schema_version": SCHEMA_VERSION, "data": str(config.data), "rewards": config.folders(),
              "records": len(records), "responses": len(items.texts), "subset_field": config.subset_field,
              "length_unit": config.length_unit, "precision": config.precision,
              **main, "members": member_blocks, "ensemble": ensemble}
    report = _json_safe(report)
    path = out / "eval_rm.json"
    path.write_text(json.dumps(report, indent=2, allow_nan=False))
    print(console_table(report))
    return path


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def console_table(report: dict) -> str:
    """A short plain-text summary of eval_rm.json: one line per reward, then accuracy per subset."""
    lines = [f"{'reward':<40} {'accuracy':>8} {'best-of-K':>9} {'ECE':>6} {'ECE(T)':>6} {'len-corr':>8}"]

    def row(name, b):
        lines.append(f"{_short(name):<40} {_fmt(b.get('accuracy')):>8} {_fmt(b.get('best_of_k_accuracy')):>9} "
                     f"{_fmt(b.get('ece')):>6} {_fmt(b.get('ece_temperature')):>6} {_fmt(b.get('length_correlation')):>8}")

    if report["ensemble"] is None:
        row(report["rewards"][0], report)
    else:
        for member in report["members"]:
            row(member["reward"], member)
        row("ensemble mean", report)
        row(f"ensemble mean - {report['ensemble']['lambda']:g}*std", report["ensemble"]["mean_minus_std"])
        lines.append(f"members' reward std (mean over responses) {_fmt(report['ensemble']['reward_std_mean'])}; "
                     f"pairs they order differently {_fmt(report['ensemble']['pair_order_disagreement'])}")
    if report["accuracy_per_subset"]:
        lines.append(f"{'subset':<40} {'n':>8} {'accuracy':>9}")
        for name, v in report["accuracy_per_subset"].items():
            lines.append(f"{_short(name):<40} {v['n']:>8} {_fmt(v['accuracy']):>9}")
    lines.append(f"{report['records']} records, {report['pairs']} pairs ({report['ties']} tied: counted wrong), "
                 f"{report['best_of_k_records']} best-of-K records")
    return "\n".join(lines)
