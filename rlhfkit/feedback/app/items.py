"""Labeling items and labels as plain data: input validation, canonical rankings, pairs.

Input (one JSON object per line): ``{"prompt": str, "responses": [str, ...]}`` with K >= 2,
optionally ``"gold"``: the known answer, as a ranking (``[1, 0]``, ``[[0, 1]]`` for a tie, ...)
or, for two responses, ``"A"``, ``"B"`` or ``"tie"``. A prompt or response may also be a list of
``{"role", "content"}`` messages. Errors name the file, the line and the field.

Every label is stored as a canonical best-first ranking of the item's responses, whatever the
mode: pairwise ``A`` is ``[0, 1]``, ``B`` is ``[1, 0]``, a tie is ``[[0, 1]]``.
"""

from __future__ import annotations

import json
from itertools import combinations
from typing import Any

MODES = ("pairwise", "ranking")
CHOICES = {"A": [0, 1], "B": [1, 0], "tie": [[0, 1]]}


class InputError(ValueError):
    """A bad input record or label. The message names the source, line and field when known."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None, field: str | None = None):
        where = ""
        if source is not None:
            where = source if line is None else f"{source}:{line}"
        if field:
            where += (": " if where else "") + f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


# ---------------------------------------------------------------- input records


def _check_text(value: Any, field: str, **at) -> None:
    if isinstance(value, str):
        if not value.strip():
            raise InputError("is empty", field=field, **at)
        return
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return
    raise InputError("must be a non-empty string or a list of {role, content} messages", field=field, **at)


def parse_jsonl(text: str, source: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON names the line."""
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(f"not valid JSON ({err.msg} at column {err.colno})", source=source, line=number) from None
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", source=source, line=number)
        rows.append((number, record))
    if not rows:
        raise InputError("holds no records", source=source)
    return rows


def validate_candidates(record: dict, source: str, line: int) -> dict:
    """One ``{"prompt", "responses", "gold"?}`` record; returns it with ``gold`` canonical or None."""
    at = {"source": source, "line": line}
    for name in ("prompt", "responses"):
        if record.get(name) is None:
            raise InputError("is missing", field=name, **at)
    _check_text(record["prompt"], "prompt", **at)
    responses = record["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise InputError("must be a list of at least 2 responses", field="responses", **at)
    seen: dict[str, int] = {}
    for i, response in enumerate(responses):
        _check_text(response, f"responses[{i}]", **at)
        key = json.dumps(response, sort_keys=True)
        if key in seen:
            raise InputError(f"is identical to responses[{seen[key]}]", field=f"responses[{i}]", **at)
        seen[key] = i
    gold = None
    if record.get("gold") is not None:
        try:
            gold = parse_gold(record["gold"], len(responses))
        except InputError as err:
            raise InputError(str(err), field="gold", **at) from None
    return {"prompt": record["prompt"], "responses": responses, "gold": gold}


def validate_prompt(record: dict, source: str, line: int) -> dict:
    if record.get("prompt") is None:
        raise InputError("is missing", source=source, line=line, field="prompt")
    _check_text(record["prompt"], "prompt", source=source, line=line)
    return {"prompt": record["prompt"]}


def load_candidates(text: str, source: str) -> list[dict]:
    return [validate_candidates(r, source, n) for n, r in parse_jsonl(text, source)]


def load_prompts(text: str, source: str) -> list[dict]:
    return [validate_prompt(r, source, n) for n, r in parse_jsonl(text, source)]


def sample_candidates(prompts: list[dict], policy_dir: str, *, k: int, max_new_tokens: int = 64,
                      temperature: float = 1.0, seed: int = 0) -> tuple[list[dict], int]:
    """K responses per prompt sampled from a policy folder, and how many prompts were dropped
    because they got fewer than 2 distinct non-empty responses (duplicate samples are merged)."""
    from rlhfkit.rollout.sample import sample_texts  # heavy (torch); only when sampling

    texts = sample_texts(policy_dir, [p["prompt"] for p in prompts], n=k, max_new_tokens=max_new_tokens,
                         temperature=temperature, seed=seed)
    records, dropped = [], 0
    for p, samples in zip(prompts, texts):
        unique = list(dict.fromkeys(s for s in samples if s.strip()))
        if len(unique) < 2:
            dropped += 1
            continue
        records.append({"prompt": p["prompt"], "responses": unique, "gold": None})
    if not records:
        raise InputError(f"the policy in {policy_dir} gave fewer than 2 distinct responses for every prompt")
    return records, dropped


def build_items(records: list[dict], mode: str) -> list[dict]:
    """Items to label. Ranking mode: one item per record. Pairwise mode: one item per pair of responses
    (C(K, 2) items for K responses), each pair's gold taken from the record's gold ranking."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "ranking":
        return [dict(r) for r in records]
    items = []
    for r in records:
        gold = pair_values(r["gold"], len(r["responses"])) if r["gold"] is not None else None
        for i, j in combinations(range(len(r["responses"])), 2):
            item_gold = None if gold is None else {1: [0, 1], 0: [[0, 1]], -1: [1, 0]}[gold[(i, j)]]
            items.append({"prompt": r["prompt"], "responses": [r["responses"][i], r["responses"][j]], "gold": item_gold})
    return items


# ---------------------------------------------------------------- rankings


def normalize_ranking(ranking: Any, k: int) -> list:
    """Canonical best-first ranking: ints, tie groups as sorted lists, a group of one as its int.

    Every index 0..k-1 must appear exactly once."""
    if not isinstance(ranking, list) or not ranking:
        raise InputError("ranking must be a non-empty list of response indices (best first; a list marks a tie)")
    out, seen = [], set()
    for pos, element in enumerate(ranking):
        group = element if isinstance(element, list) else [element]
        if not group:
            raise InputError(f"ranking[{pos}] is an empty tie group")
        for index in group:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < k:
                raise InputError(f"ranking[{pos}]: {index!r} is not a response index 0..{k - 1}")
            if index in seen:
                raise InputError(f"ranking[{pos}]: response {index} appears more than once")
            seen.add(index)
        out.append(sorted(group) if len(group) > 1 else group[0])
    missing = sorted(set(range(k)) - seen)
    if missing:
        raise InputError(f"ranking leaves out response(s) {missing}; rank all {k}")
    return out


def parse_gold(value: Any, k: int) -> list:
    if isinstance(value, str):
        if k != 2 or value not in CHOICES:
            raise InputError(f"a gold choice must be one of {list(CHOICES)} (two responses only); use a ranking")
        return CHOICES[value]
    return normalize_ranking(value, k)


def pair_values(ranking: list, k: int) -> dict[tuple[int, int], int]:
    """For each pair i < j: +1 if i is ranked above j, -1 if below, 0 if tied."""
    level = {}
    for pos, element in enumerate(ranking):
        for index in element if isinstance(element, list) else [element]:
            level[index] = pos
    return {(i, j): (level[i] < level[j]) - (level[i] > level[j]) for i, j in combinations(range(k), 2)}


def mean_positions(ranking: list, k: int) -> list[float]:
    """Each response's position (0 = best); tied responses share the mean of their positions."""
    out, start = [0.0] * k, 0
    for element in ranking:
        group = element if isinstance(element, list) else [element]
        for index in group:
            out[index] = start + (len(group) - 1) / 2
        start += len(group)
    return out


def ranking_from_scores(positions: list[float]) -> list:
    """Best-first ranking from mean positions (lower is better); equal positions are a tie."""
    groups: dict[float, list[int]] = {}
    for index, p in enumerate(positions):
        groups.setdefault(round(p, 9), []).append(index)
    return [g if len(g) > 1 else g[0] for _, g in sorted(groups.items())]
