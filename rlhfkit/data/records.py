"""Record schemas and validation: every bad record is an error that names the file, line and field.

Formats (TRL-compatible column names; see README "Data formats"):

=============  ==========================================================================
kind           fields
=============  ==========================================================================
``sft``        ``prompt`` + ``completion``, or ``messages`` (the last message is the
               assistant's completion, the ones before it the prompt)
``pairwise``   ``prompt``, ``chosen``, ``rejected``; optional ``margin`` (float),
               ``label_prob`` (P(chosen better) in [0, 1]), ``annotator`` (str or list)
``ranking``    ``prompt``, ``responses`` (K >= 2), ``ranking`` (best first; an element is an
               index or a list of tied indices)
``preference`` a file mixing ``pairwise`` and ``ranking`` records
``unpaired``   ``prompt``, ``completion``, ``label`` (true = desirable)
``prompt``     ``prompt``
``text``       ``text`` (raw pre-training documents)
=============  ==========================================================================

Wherever a string is allowed, a conversational list of ``{"role", "content"}`` messages is too.
Public layouts (Anthropic HH transcripts, UltraFeedback-style conversations that repeat the prompt,
``score_chosen`` / ``score_rejected``) are normalised into these forms first: :mod:`rlhfkit.data.layouts`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rlhfkit.data.layouts import LayoutError, LayoutOptions, normalise_record
from rlhfkit.data.rankings import expand_ranking
from rlhfkit.data.tokenize import RenderError

KINDS = ("sft", "pairwise", "ranking", "preference", "unpaired", "prompt", "text")


class DataError(ValueError):
    """A record is malformed. The message names the file, the line (1-based) and the field."""

    def __init__(self, source: str, line: int | None, field: str | None, message: str):
        where = source if line is None else f"{source}:{line}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")
        self.source, self.line, self.field = source, line, field


@contextmanager
def at_record(source: str, line: int | None, *, completion: str = "completion"):
    """Turn a :class:`~rlhfkit.data.tokenize.RenderError` raised while encoding one record (e.g. a
    chat template that refuses its role order) into a DataError naming the file, the line and the
    field; ``completion`` names the field that held the completion ("chosen", "responses[1]", ...)."""
    try:
        yield
    except RenderError as err:
        raise DataError(source, line, completion if err.field == "completion" else err.field, str(err)) from None


@dataclass
class RecordSet:
    """Validated records with where each came from, and the count of records skipped on purpose."""

    records: list[dict[str, Any]]
    source: str
    lines: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)


# ---------------------------------------------------------------- field checks


def _check_text(value: Any, source: str, line: int, name: str, *, allow_empty: bool = False) -> None:
    """A field holds a non-empty string or a non-empty list of {role, content} messages."""
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise DataError(source, line, name, "is empty")
        return
    if isinstance(value, list):
        if not value:
            raise DataError(source, line, name, "is an empty message list")
        for i, msg in enumerate(value):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise DataError(source, line, f"{name}[{i}]", "must be an object with 'role' and 'content'")
            if not isinstance(msg["role"], str) or not isinstance(msg["content"], str):
                raise DataError(source, line, f"{name}[{i}]", "'role' and 'content' must be strings")
        if not allow_empty and not any(m["content"].strip() for m in value):
            raise DataError(source, line, name, "has only empty messages")
        return
    raise DataError(source, line, name, f"must be a string or a list of messages, got {type(value).__name__}")


def _require(record: dict, names: Iterable[str], source: str, line: int) -> None:
    for name in names:
        if name not in record or record[name] is None:
            raise DataError(source, line, name, "is missing")


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _check_number(record: dict, name: str, source: str, line: int, lo: float | None = None, hi: float | None = None):
    if name not in record or record[name] is None:
        return
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(source, line, name, f"must be a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DataError(source, line, name, f"must lie in [{lo}, {hi}], got {value!r}")


def validate_sft(record: dict, source: str, line: int) -> dict:
    if "messages" in record:
        messages = record["messages"]
        _check_text(messages, source, line, "messages")
        if len(messages) < 2:
            raise DataError(source, line, "messages", "needs at least one prompt message and the assistant's reply")
        if messages[-1]["role"] != "assistant":
            raise DataError(source, line, "messages", "the last message must have role 'assistant'")
        if not messages[-1]["content"].strip():
            raise DataError(source, line, "messages", "the assistant's completion is empty")
        return {"prompt": messages[:-1], "completion": [messages[-1]]}
    _require(record, ("prompt", "completion"), source, line)
    _check_text(record["prompt"], source, line, "prompt")
    _check_text(record["completion"], source, line, "completion")
    return record


def validate_pairwise(record: dict, source: str, line: int) -> dict:
    _require(record, ("prompt", "chosen", "rejected"), source, line)
    _check_text(record["prompt"], source, line, "prompt")
    _check_text(record["chosen"], source, line, "chosen")
    _check_text(record["rejected"], source, line, "rejected")
    if _same(record["chosen"], record["rejected"]):
        raise DataError(source, line, "rejected", "is identical to 'chosen'")
    _check_number(record, "margin", source, line)
    _check_number(record, "score_chosen", source, line)  # UltraFeedback ratings: used only as margin_from_scores
    _check_number(record, "score_rejected", source, line)
    _check_number(record, "label_prob", source, line, 0.0, 1.0)
    annotator = record.get("annotator")
    if annotator is not None and not isinstance(annotator, (str, int, list)):
        raise DataError(source, line, "annotator", "must be a string, an integer or a list of them")
    return record


def validate_ranking(record: dict, source: str, line: int) -> dict:
    _require(record, ("prompt", "responses", "ranking"), source, line)
    _check_text(record["prompt"], source, line, "prompt")
    responses = record["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(source, line, "responses", "must be a list of at least 2 responses")
    for i, response in enumerate(responses):
        _check_text(response, source, line, f"responses[{i}]")
    if not isinstance(record["ranking"], list):
        raise DataError(source, line, "ranking", "must be a list (best first; a list of indices marks a tie)")
    try:
        expand_ranking(record["ranking"], len(responses), ties="soft")
    except ValueError as err:
        raise DataError(source, line, "ranking", str(err)) from None
    return record


def validate_preference(record: dict, source: str, line: int) -> dict:
    if "responses" in record or "ranking" in record:
        return validate_ranking(record, source, line)
    return validate_pairwise(record, source, line)


def validate_unpaired(record: dict, source: str, line: int) -> dict:
    _require(record, ("prompt", "completion", "label"), source, line)
    _check_text(record["prompt"], source, line, "prompt")
    _check_text(record["completion"], source, line, "completion")
    if not isinstance(record["label"], bool):
        raise DataError(source, line, "label", f"must be true or false, got {record['label']!r}")
    return record


def validate_text(record: dict, source: str, line: int) -> dict:
    _require(record, ("text",), source, line)
    if not isinstance(record["text"], str) or not record["text"].strip():
        raise DataError(source, line, "text", "must be a non-empty string")
    return record


def validate_prompt(record: dict, source: str, line: int) -> dict:
    _require(record, ("prompt",), source, line)
    _check_text(record["prompt"], source, line, "prompt")
    return record


VALIDATORS = {
    "sft": validate_sft,
    "pairwise": validate_pairwise,
    "ranking": validate_ranking,
    "preference": validate_preference,
    "unpaired": validate_unpaired,
    "prompt": validate_prompt,
    "text": validate_text,
}


# ---------------------------------------------------------------- loading


def iter_jsonl(path: str | Path):
    """``(line number, object)`` of each non-blank line of a JSONL file; a line that is not a JSON
    object is a DataError naming the file and the line."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(str(path), number, None, f"not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise DataError(str(path), number, None, f"expected a JSON object, got {type(record).__name__}")
            yield number, record


def _iter_hf_dataset(name: str, split: str):
    import datasets  # the HF library; imported late because it is slow to import

    local = Path(name)
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")
    if local.is_dir() and any((local / name).exists() for name in saved):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, split=split)
    for index, record in enumerate(ds):
        yield index + 1, dict(record)  # "line" = 1-based row number for HF datasets


def load_records(source: str | Path, kind: str, *, split: str = "train", limit: int | None = None,
                 layout: LayoutOptions | None = None) -> RecordSet:
    """Read and validate records of ``kind`` from a JSONL file, an HF dataset folder, or an HF hub name.

    Records in a known public layout are normalised first (:func:`rlhfkit.data.layouts.normalise_record`,
    as ``layout`` asks; by default HH transcripts stay raw text and scores are not margins).
    Raises DataError (file, line, field) on the first bad record; nothing is dropped silently.
    """
    layout = layout or LayoutOptions()
    if kind not in VALIDATORS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    validate = VALIDATORS[kind]
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.is_file():
        if not path.exists():
            raise DataError(str(path), None, None, "file does not exist")
        rows = iter_jsonl(path)
    else:
        rows = _iter_hf_dataset(str(source), split)
    records, lines = [], []
    for number, record in rows:
        try:
            record = normalise_record(record, kind, layout)
        except LayoutError as err:
            raise DataError(str(source), number, err.field, str(err)) from None
        records.append(validate(record, str(source), number))
        lines.append(number)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(str(source), None, None, f"holds no {kind} records")
    return RecordSet(records=records, source=str(source), lines=lines)


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves half a file behind
    return path


def preference_pairs(records: Iterable[dict], *, ties: str = "skip") -> list[dict]:
    """Pairwise view of mixed preference records: a ranking becomes its C(K,2) pairs.

    Each pair keeps ``group`` (index of its source record) so a ranking's pairs can be averaged
    per prompt (InstructGPT), and ``label_prob`` (1.0 for strict pairs, 0.5 for ties kept as soft).
    """
    pairs = []
    for group, record in enumerate(records):
        if "ranking" in record:
            for better, worse, prob in expand_ranking(record["ranking"], len(record["responses"]), ties=ties):
                pairs.append({
                    "prompt": record["prompt"],
                    "chosen": record["responses"][better],
                    "rejected": record["responses"][worse],
                    "label_prob": prob,
                    "group": group,
                })
        else:
            pair = dict(record)
            pair["group"] = group
            pairs.append(pair)
    return pairs
