"""Label candidates with a judge into pairwise preferences (RLAIF, Lee et al. 2023), resumably.

``judge_candidates`` is the one labelling loop: ``rlhfkit judge`` and the feedback phase of
Constitutional AI both call it. Every comparison becomes one pairwise record::

    {"prompt", "chosen", "rejected",
     "label_prob":         P(chosen ≻ rejected), position-debiased (>= 0.5),
     "judge":              the judge's name,
     "prob_chosen_first":  P(chosen better) when chosen was shown first (A),
     "prob_chosen_second": P(chosen better) when chosen was shown second (B),
     "criterion", "principle" (when a constitution's comparison principle was drawn),
     "item", "pair"}      which input record and which two of its responses

The records load as ``pairwise`` data, so ``rlhfkit reward`` and ``rlhfkit dpo`` train on them
directly (DPO reads ``label_prob`` as a soft label). Labels are appended chunk by chunk and
flushed; a rerun after a crash skips the comparisons already in the file (a half-written last line
is dropped and done again), so no verdict is paid for twice.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rlhfkit.config import require, save_config
from rlhfkit.data.records import DataError, load_records, write_jsonl
from rlhfkit.feedback.judges.base import Judge, Verdict, position_bias
from rlhfkit.feedback.judges.config import JudgeConfig

log = logging.getLogger(__name__)

PAIR_MODES = ("all", "first", "adjacent")


def candidate_pairs(k: int, mode: str = "all") -> list[tuple[int, int]]:
    """Which responses of a K-candidate item are compared: every pair, only (0, 1), or neighbours."""
    if mode == "all":
        return [(i, j) for i in range(k) for j in range(i + 1, k)]
    if mode == "first":
        return [(0, 1)] if k >= 2 else []
    if mode == "adjacent":
        return [(i, i + 1) for i in range(k - 1)]
    raise ValueError(f"pairs must be one of {PAIR_MODES}, got {mode!r}")


def verdict_record(prompt, a: str, b: str, verdict: Verdict, judge_name: str) -> dict:
    """The pairwise record of one verdict: the preferred response is ``chosen`` (a on a tie)."""
    a_wins = verdict.prob_a >= 0.5
    flip = (lambda p: p) if a_wins else (lambda p: None if p is None else 1.0 - p)
    record = {"prompt": prompt, "chosen": a if a_wins else b, "rejected": b if a_wins else a,
              "label_prob": flip(verdict.prob_a), "judge": judge_name,
              "prob_chosen_first": flip(verdict.prob_a_first if a_wins else verdict.prob_a_second),
              "prob_chosen_second": flip(verdict.prob_a_second if a_wins else verdict.prob_a_first)}
    if verdict.rationale is not None:
        record["rationale"] = verdict.rationale
    return record


def read_journal(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of each complete record of an append-only JSONL file this code writes;
    a torn last line (a crash while writing) is cut off so the file can be appended to again."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        log.warning("%s: dropping a half-written last line (%d bytes); it will be done again", path, len(raw) - keep)
        path.write_bytes(raw[:keep])
        raw = raw[:keep]
    rows = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise _not_ours(path, number, err) from None
    return rows


def journal_keys(path: Path, rows: list[tuple[int, dict]], key) -> set:
    """``key(record)`` of every record read by :func:`read_journal`: what a resumed run skips."""
    done = set()
    for number, record in rows:
        try:
            done.add(key(record))
        except (KeyError, TypeError) as err:
            raise _not_ours(path, number, err) from None
    return done


def _not_ours(path: Path, number: int, err: Exception) -> ValueError:
    return ValueError(f"{path}:{number}: not a record this run wrote ({err}); move the file away to start over")


def judge_candidates(judge: Judge, items: Sequence[dict], output: str | Path, *, pairs: str = "all",
                     criteria: Sequence[str] | None = None, principle_names: Sequence[str] | None = None,
                     seed: int = 0, chunk_size: int = 64) -> dict:
    """Compare the responses of every item (``{"prompt", "responses": [...]}``) and append one
    pairwise record per comparison to ``output`` (pairs of identical or empty responses are skipped
    and counted: they carry no preference, and pairwise data needs two texts). With ``criteria`` each comparison draws one of them
    (uniformly, seeded by item and pair, so a resumed run draws the same). Returns counts and the
    mean position bias of this run's new verdicts."""
    if criteria is not None and principle_names is not None and len(criteria) != len(principle_names):
        raise ValueError(f"{len(criteria)} criteria but {len(principle_names)} principle names")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = read_journal(output)
    _check_same_judge(output, rows, judge.name)
    done = journal_keys(output, rows, lambda r: (r["item"], tuple(r["pair"])))
    _check_done_match(output, rows, items, criteria)
    todo = []  # (item index, i, j, criterion index or None)
    skipped = 0
    for index, item in enumerate(items):
        for i, j in candidate_pairs(len(item["responses"]), pairs):
            a, b = item["responses"][i].strip(), item["responses"][j].strip()
            if (index, (i, j)) in done:
                continue
            if a == b or not a or not b:
                skipped += 1  # identical responses carry no preference; pairwise data needs two texts
                continue
            c = None if not criteria else random.Random(f"{seed}:{index}:{i}:{j}").randrange(len(criteria))
            todo.append((index, i, j, c))
    log.info("judge %s: %d comparisons to make (%d already in %s)", judge.name, len(todo), len(done), output)
    biases: list[float] = []
    start = time.time()
    with output.open("a", encoding="utf-8") as handle:
        for begin in range(0, len(todo), chunk_size):
            chunk = todo[begin: begin + chunk_size]
            # one judge call per criterion in the chunk (a criterion is part of the judge prompt)
            by_criterion: dict = {}
            for row in chunk:
                by_criterion.setdefault(row[3], []).append(row)
            for c, rows in by_criterion.items():
                prompts = [items[index]["prompt"] for index, _, _, _ in rows]
                a = [items[index]["responses"][i] for index, i, _, _ in rows]
                b = [items[index]["responses"][j] for index, _, j, _ in rows]
                verdicts = judge.compare_batch(prompts, a, b, criterion=None if c is None else criteria[c])
                for (index, i, j, _), prompt, ra, rb, v in zip(rows, prompts, a, b, verdicts):
                    record = verdict_record(prompt, ra, rb, v, judge.name)
                    if c is not None:
                        record["criterion"] = criteria[c]
                        if principle_names is not None:
                            record["principle"] = principle_names[c]
                    record.update(item=index, pair=[i, j])
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    if v.position_bias is not None:
                        biases.append(v.position_bias)
            handle.flush()
            n = begin + len(chunk)
            log.info("judge %s: %d/%d comparisons (%.1f/s)", judge.name, n, len(todo), n / max(time.time() - start, 1e-9))
    return {"new": len(todo), "already_done": len(done), "skipped_identical_or_empty": skipped,
            "position_bias": sum(biases) / len(biases) if biases else None}


# ---------------------------------------------------------------- rlhfkit judge


@dataclass
class JudgeRunConfig:
    """``rlhfkit judge``: AI preference labels for prompts with candidate responses (RLAIF)."""

    data: str = ""
    """JSONL of {"prompt", "responses": [two or more]} records; or prompt records when `policy` samples the candidates"""
    output_dir: str = "runs/judge"
    """run folder: prefs.jsonl (pairwise records with label_prob), summary.json, candidates.jsonl when sampled"""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """the judge (judge.kind, judge.model, judge.url, ...)"""
    policy: str | None = None
    """a policy folder to sample `n_candidates` responses per prompt from (instead of reading them from `data`)"""
    n_candidates: int = 2
    """responses sampled per prompt when `policy` is set"""
    max_new_tokens: int = 128
    """longest sampled response, in tokens"""
    temperature: float = 1.0
    """sampling temperature of the policy"""
    pairs: str = "all"
    """which candidate pairs are judged: all, first (only the first two) or adjacent"""
    max_items: int | None = None
    """label only the first N records (None: all)"""
    chunk_size: int = 64
    """comparisons per chunk (each shown in both orders); the file is flushed after each chunk"""
    seed: int = 0
    """seed of the sampling"""

    def validate(self) -> None:
        require(bool(self.data), "data: a JSONL file of prompts (with responses, or with `policy` to sample them)")
        require(self.pairs in PAIR_MODES, f"pairs must be one of {list(PAIR_MODES)}")
        require(self.n_candidates >= 2, "n_candidates must be >= 2")
        require(self.chunk_size >= 1, "chunk_size must be >= 1")
        self.judge.validate()


def load_candidates(path: str, *, limit: int | None = None) -> list[dict]:
    """``{"prompt", "responses"}`` records; a record without a list of two or more string responses is
    a DataError naming the file, line and field (an empty response is kept, and never compared)."""
    records = load_records(path, "prompt", limit=limit)
    for record, line in zip(records.records, records.lines):
        responses = record.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(path, line, "responses", "needs a list of two or more responses (or set `policy` to sample them)")
        for i, r in enumerate(responses):
            if not isinstance(r, str):
                raise DataError(path, line, f"responses[{i}]", f"must be a string, got {type(r).__name__}")
    return records.records


def run_judge(config: JudgeRunConfig, *, resume: bool = False) -> Path:
    """Label every item, continuing an interrupted run (the labels already written are kept)."""
    from rlhfkit.feedback.judges import build_judge

    config.validate()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    if config.policy is None:
        items = load_candidates(config.data, limit=config.max_items)
    else:
        items = _sampled_candidates(config, out / "candidates.jsonl")
    judge = build_judge(config.judge)
    prefs = out / "prefs.jsonl"
    counts = judge_candidates(judge, items, prefs, pairs=config.pairs, seed=config.seed, chunk_size=config.chunk_size)
    summary = {"judge": judge.name, "items": len(items), **counts,
               **label_stats([r for _, r in read_journal(prefs)])}
    if getattr(judge, "stats", None):
        summary["judge_stats"] = dict(judge.stats)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("judge %s: %s", judge.name, json.dumps(summary))
    return prefs


def label_stats(rows: list[dict]) -> dict:
    """Mean label_prob, mean position bias, and how often both orders pick the same response."""
    both = [r for r in rows if r.get("prob_chosen_first") is not None and r.get("prob_chosen_second") is not None]
    return {
        "records": len(rows),
        "mean_label_prob": sum(r["label_prob"] for r in rows) / len(rows) if rows else None,
        "mean_position_bias": (sum(position_bias(r["prob_chosen_first"], r["prob_chosen_second"]) for r in both)
                               / len(both)) if both else None,
        "order_consistency": (sum((r["prob_chosen_first"] >= 0.5) == (r["prob_chosen_second"] >= 0.5) for r in both)
                              / len(both)) if both else None,
    }


def _check_same_judge(output: Path, rows: list[tuple[int, dict]], name: str) -> None:
    """One judge per labels file: the pairs already in it would not be labelled again by another."""
    if rows and rows[0][1].get("judge") != name:
        raise DataError(str(output), rows[0][0], "judge", f"holds labels of judge {rows[0][1].get('judge')!r}, not "
                        f"{name!r}: use another output_dir")


def _check_done_match(output: Path, rows: list[tuple[int, dict]], items: Sequence[dict],
                      criteria: Sequence[str] | None) -> None:
    """The labels already in ``output`` must be of these items (and criteria): a resumed run whose data
    or constitution changed would otherwise count old labels as done for new prompts."""
    for number, r in rows:
        item = items[r["item"]] if r["item"] < len(items) else None
        if item is not None and max(r["pair"]) >= len(item["responses"]):
            item = None
        texts = None if item is None else {item["responses"][r["pair"][0]].strip(), item["responses"][r["pair"][1]].strip()}
        if item is None or item["prompt"] != r["prompt"] or texts != {r["chosen"].strip(), r["rejected"].strip()}:
            raise DataError(str(output), number, "item", f"labels item {r['item']} pair {r['pair']}, which is not "
                            "in this run's data (the data or max_items changed): use another output_dir")
        if criteria is not None and r.get("criterion") not in criteria:
            raise DataError(str(output), number, "criterion", f"{r.get('criterion')!r} is not one of this run's "
                            "criteria (the constitution changed): use another output_dir")


def _sampled_candidates(config: JudgeRunConfig, path: Path) -> list[dict]:
    prompts = [r["prompt"] for r in load_records(config.data, "prompt", limit=config.max_items)]
    return sample_candidates(config.policy, prompts, path, n=config.n_candidates,
                             max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)


def sample_candidates(policy: str, prompts: list, path: Path, *, n: int, max_new_tokens: int, temperature: float,
                      seed: int) -> list[dict]:
    """``n`` responses per prompt from ``policy``, sampled once and kept in ``path``, so a resumed run
    judges the very same texts."""
    if path.exists():
        return load_candidates(str(path))
    from rlhfkit.rollout.sample import sample_texts

    responses = sample_texts(policy, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    write_jsonl(({"prompt": p, "responses": r} for p, r in zip(prompts, responses)), path)
    return load_candidates(str(path))
