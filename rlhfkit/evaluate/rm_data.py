"""Preference sets for ``rlhfkit eval-rm``: read a file in any of the usual containers and turn each row
into an :class:`RMRecord` (a prompt, its chosen and rejected responses, and what it is grouped by).

Containers: JSONL, JSON (a list of objects, or JSONL under a .json name), Parquet, CSV, a saved Hugging
Face dataset folder or a hub name. Layouts, read as they come:

- pairwise (RewardBench: ``prompt, chosen, rejected, subset``; TRL's columns; and every public layout
  that :mod:`rlhfkit.data.layouts` normalises, HH-RLHF transcripts and UltraFeedback conversations
  included), validated by :func:`rlhfkit.data.records.validate_pairwise`;
- best-of-K (RewardBench 2: ``chosen`` a response or a list of them, ``rejected`` a list): a record
  is best-of-K when ``chosen`` or ``rejected`` is a list of responses (strings or message lists) rather
  than one response; one chosen against one rejected is scored as a pair.

A missing or empty field is a :class:`~rlhfkit.data.records.DataError` naming the file, the line (the
1-based row or list element for JSON lists, Parquet and datasets; the physical line for JSONL and CSV)
and the field. Not here: scoring and metrics (:mod:`rlhfkit.evaluate.rm_run`, :mod:`rlhfkit.evaluate.rm_metrics`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rlhfkit.data.layouts import LayoutError, LayoutOptions, is_messages, normalise_record
from rlhfkit.data.records import DataError, validate_pairwise, validate_prompt

CSV_NUMBERS = ("label_prob", "margin", "score_chosen", "score_rejected")
"""CSV cells are text: these columns are read as numbers (an empty cell is a missing value)."""


@dataclass
class RMRecord:
    """One evaluation item: ``chosen`` and ``rejected`` are lists of responses (one each for a pair)."""

    prompt: Any
    chosen: list
    rejected: list
    line: int
    subset: str | None = None
    annotator: Any = None
    label_prob: float | None = None

    @property
    def is_pair(self) -> bool:
        return len(self.chosen) == 1 and len(self.rejected) == 1


# ---------------------------------------------------------------- containers


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("r", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(str(path), number, None, f"not valid JSON ({err.msg} at column {err.colno})") from None


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        yield from _jsonl_rows(path)
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(str(path), err.lineno, None, f"not valid JSON ({err.msg} at column {err.colno})") from None
    yield from enumerate(rows, start=1)


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            record: dict[str, Any] = {k: (None if v == "" else v) for k, v in row.items() if k is not None}
            for name in CSV_NUMBERS:
                if record.get(name) is not None:
                    try:
                        record[name] = float(record[name])
                    except ValueError:
                        raise DataError(str(path), reader.line_num, name, f"must be a number, got {record[name]!r}") from None
            yield reader.line_num, record


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq  # installed with datasets

    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def _dataset_rows(name: str, split: str) -> Iterator[tuple[int, Any]]:
    import datasets  # slow to import: only when a dataset is asked for

    local = Path(name)
    if local.is_dir():
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, split=split)
    for index, row in enumerate(ds, start=1):
        yield index, dict(row)


def read_rows(source: str | Path, *, split: str = "train") -> Iterator[tuple[int, Any]]:
    """(line, row) of every row of a JSONL / JSON / Parquet / CSV file, a saved dataset folder or a hub name."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet", ".csv") and not path.exists():
        raise DataError(str(source), None, None, "file does not exist")
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".jsonl" or path.is_file():
        return _jsonl_rows(path)
    return _dataset_rows(str(source), split)


# ---------------------------------------------------------------- rows -> records


def _is_response_list(value: Any) -> bool:
    """A list of responses (strings or message lists), as opposed to one response given as messages."""
    return isinstance(value, list) and not is_messages(value) and not (value and isinstance(value[0], dict))


def _responses(value: Any, source: str, line: int, name: str) -> list:
    items = value if _is_response_list(value) else [value]
    if not items:
        raise DataError(source, line, name, "is an empty list")
    for i, item in enumerate(items):
        where = f"{name}[{i}]" if _is_response_list(value) else name
        if isinstance(item, str):
            if not item.strip():
                raise DataError(source, line, where, "is empty")
        elif is_messages(item):
            if not any(m["content"].strip() for m in item):
                raise DataError(source, line, where, "has only empty messages")
        else:
            raise DataError(source, line, where, f"must be a string or a list of messages, got {type(item).__name__}")
    return list(items)


def _annotator(value: Any, source: str, line: int) -> Any:
    if value is None or isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return value
    raise DataError(source, line, "annotator", f"must be a string, an integer or a list of them, got {value!r}")


def to_record(row: Any, source: str, line: int, *, subset_field: str, layout: LayoutOptions) -> RMRecord:
    """One row → an :class:`RMRecord`; a malformed row raises DataError (file, line, field)."""
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"expected an object, got {type(row).__name__}")
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            raise DataError(source, line, name, "is missing")
    if _is_response_list(row["chosen"]) or _is_response_list(row["rejected"]):
        validate_prompt(row, source, line)
        chosen = _responses(row["chosen"], source, line, "chosen")
        rejected = _responses(row["rejected"], source, line, "rejected")
        if row.get("label_prob") is not None and not (len(chosen) == 1 and len(rejected) == 1):
            raise DataError(source, line, "label_prob", "is a pair's soft label; a best-of-K record has no single pair")
        label_prob = row.get("label_prob")
    else:
        try:
            row = normalise_record(row, "pairwise", layout)
        except LayoutError as err:
            raise DataError(source, line, err.field, str(err)) from None
        validate_pairwise(row, source, line)
        chosen, rejected, label_prob = [row["chosen"]], [row["rejected"]], row.get("label_prob")
    subset = row.get(subset_field)
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, (str, int)) or not str(subset).strip():
            raise DataError(source, line, subset_field, f"must be a non-empty name, got {subset!r}")
        subset = str(subset)
    return RMRecord(prompt=row["prompt"], chosen=chosen, rejected=rejected, line=line, subset=subset,
                    annotator=_annotator(row.get("annotator"), source, line),
                    label_prob=None if label_prob is None else float(label_prob))


def load_rm_records(source: str | Path, *, subset_field: str = "subset", split: str = "train",
                    layout: LayoutOptions | None = None, limit: int | None = None) -> list[RMRecord]:
    """Every row of ``source`` as an :class:`RMRecord`. When some rows carry ``subset_field``, every row
    must (a row without it is a DataError, not a silent "no subset")."""
    layout = layout or LayoutOptions()
    records = []
    for line, row in read_rows(source, split=split):
        records.append(to_record(row, str(source), line, subset_field=subset_field, layout=layout))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(str(source), None, None, "holds no preference records")
    if any(r.subset is not None for r in records):
        missing = next((r for r in records if r.subset is None), None)
        if missing is not None:
            raise DataError(str(source), missing.line, subset_field, "is missing (other records carry it)")
    return records
