"""The constitution file: principles for critique and revision, and principles for comparison.

Format (YAML)::

    name: my-constitution            # optional
    description: what it is for      # optional
    principles:                      # supervised phase (Bai et al. 2022, sec. 3.1)
      - name: harmless
        critique: <a critique request, put to the model as a user turn after its response>
        revision: <a revision request, put to the model after its critique>
    comparison_principles:           # feedback phase (sec. 4.1); may be empty if that phase is not run
      - name: harmless
        text: <the question put to the judge, e.g. "Which response is less harmful?">

Every error names the file, the line and the field (``my.yaml:7: principles[1]: missing field
'revision'``): a constitution is written by hand, and a typo should cost seconds, not a run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

DEFAULT_CONSTITUTION = resources.files(__package__).joinpath("default.yaml")
"""rlhfkit's own constitution, shipped as package data (read through importlib.resources)"""

_TOP_KEYS = {"name", "description", "principles", "comparison_principles"}
_LIST_FIELDS = {"principles": ("name", "critique", "revision"), "comparison_principles": ("name", "text")}


class ConstitutionError(ValueError):
    """A constitution file is malformed; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str


@dataclass(frozen=True)
class ComparisonPrinciple:
    name: str
    text: str


@dataclass(frozen=True)
class Constitution:
    name: str
    description: str
    principles: tuple[Principle, ...]
    comparison_principles: tuple[ComparisonPrinciple, ...]
    source: str = ""

    def sample_principle(self, rng: random.Random) -> Principle:
        """One critique/revision principle, uniformly (Bai et al. draw one per revision step)."""
        return rng.choice(self.principles)


def _fail(source: str, node, where: str, message: str):
    line = f":{node.start_mark.line + 1}" if node is not None else ""
    raise ConstitutionError(f"{source}{line}: {where}{': ' if where else ''}{message}")


def _mapping(source: str, node, where: str) -> dict:
    """A YAML mapping node as {key: (key node, value node)}; a key given twice is an error (YAML
    itself would keep the last one silently)."""
    out = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            _fail(source, key, where, "keys must be plain names")
        if key.value in out:
            first = out[key.value][0].start_mark.line + 1
            _fail(source, key, where, f"field {key.value!r} given twice (first on line {first})")
        out[key.value] = (key, value)
    return out


def _text(source: str, node, where: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        _fail(source, node, where, "must be a string")
    if not node.value.strip():
        _fail(source, node, where, "is empty")
    return " ".join(node.value.split())


def _entries(source: str, node, key: str) -> list[dict]:
    if not isinstance(node, yaml.SequenceNode):
        _fail(source, node, key, "must be a list")
    fields = _LIST_FIELDS[key]
    out, seen = [], {}
    for i, item in enumerate(node.value):
        where = f"{key}[{i}]"
        if not isinstance(item, yaml.MappingNode):
            _fail(source, item, where, f"must be a mapping with {', '.join(fields)}")
        entry = _mapping(source, item, where)
        for name, (key_node, _) in entry.items():
            if name not in fields:
                _fail(source, key_node, where, f"unknown field {name!r} (expected {', '.join(fields)})")
        for name in fields:
            if name not in entry:
                _fail(source, item, where, f"missing field {name!r}")
        values = {name: _text(source, entry[name][1], f"{where}.{name}") for name in fields}
        if values["name"] in seen:
            _fail(source, entry["name"][1], f"{where}.name",
                  f"duplicate name {values['name']!r} (also {key}[{seen[values['name']]}])")
        seen[values["name"]] = i
        out.append(values)
    return out


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Read and check a constitution; ``None`` or ``"default"`` is the one rlhfkit ships."""
    path = DEFAULT_CONSTITUTION if path is None or str(path) == "default" else Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConstitutionError(f"{source}: cannot read the constitution: {err.strerror or err}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConstitutionError(f"{source}{line}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    if root is None:
        _fail(source, None, "", "the file is empty (expected 'principles' and 'comparison_principles')")
    if not isinstance(root, yaml.MappingNode):
        _fail(source, root, "", "the file must be a mapping with 'principles' and 'comparison_principles'")
    top = _mapping(source, root, "")
    for name, (key_node, _) in top.items():
        if name not in _TOP_KEYS:
            _fail(source, key_node, "", f"unknown key {name!r} (expected {', '.join(sorted(_TOP_KEYS))})")
    if "principles" not in top:
        _fail(source, root, "", "missing field 'principles' (a list of name, critique, revision)")
    principles = _entries(source, top["principles"][1], "principles")
    if not principles:
        _fail(source, top["principles"][1], "principles", "needs at least one principle")
    comparisons = _entries(source, top["comparison_principles"][1], "comparison_principles") \
        if "comparison_principles" in top else []
    meta = {k: _text(source, top[k][1], k) for k in ("name", "description") if k in top}
    return Constitution(name=meta.get("name", Path(path.name).stem), description=meta.get("description", ""),
                        principles=tuple(Principle(**p) for p in principles),
                        comparison_principles=tuple(ComparisonPrinciple(**c) for c in comparisons), source=source)
