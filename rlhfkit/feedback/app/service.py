"""The operations the CLI and the server share: make a project, rescore it, export, stats."""

from __future__ import annotations

from pathlib import Path

from rlhfkit.feedback.app.active import Scorer, priorities
from rlhfkit.feedback.app.items import build_items, load_candidates, load_prompts, sample_candidates
from rlhfkit.feedback.app.report import agreement_report, budget_report, pairwise_records, ranking_records
from rlhfkit.feedback.app.storage import Refused, Storage


def create_project(store: Storage, *, name: str, mode: str, candidates_jsonl: str | None = None,
                   prompts_jsonl: str | None = None, policy_dir: str | None = None, k: int = 2,
                   max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0, source: str = "upload.jsonl",
                   overlap: int = 1, strength_scale: int = 0, guidelines: str = "",
                   scorer: Scorer | None = None) -> dict:
    """From a JSONL of prompts with candidates, or by sampling ``k`` responses per prompt from a policy.

    Raises InputError (file, line, field) for bad records and Refused for bad settings."""
    dropped = 0
    if (candidates_jsonl is None) == (policy_dir is None):
        raise Refused(422, "give either candidates_jsonl, or policy_dir with prompts_jsonl")
    if candidates_jsonl is not None:
        records = load_candidates(candidates_jsonl, source)
    else:
        if prompts_jsonl is None:
            raise Refused(422, "prompts_jsonl: required with policy_dir")
        if k < 2:
            raise Refused(422, "k: sample at least 2 responses per prompt")
        if not Path(policy_dir).is_dir():
            raise Refused(422, f"policy_dir: no folder {policy_dir!r} on the server")
        try:
            records, dropped = sample_candidates(load_prompts(prompts_jsonl, source), policy_dir, k=k,
                                                 max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        except ImportError as err:
            raise Refused(501, f"sampling from a policy is not available here: {err}") from None
        except (OSError, ValueError) as err:  # no such folder, not a model, ...
            raise Refused(422, f"policy_dir: cannot sample from {policy_dir!r}: {err}") from None
    items = build_items(records, mode)
    if scorer is not None:
        for item, p in zip(items, priorities(scorer, items)):
            item["priority"] = p
    project = store.create_project(name, mode=mode, items=items, overlap=overlap,
                                   strength_scale=strength_scale, guidelines=guidelines)
    project["dropped_prompts"] = dropped
    return project


def rescore(store: Storage, project_id: int, scorer: Scorer) -> int:
    """Recompute every item's priority with ``scorer``; returns the number of items scored."""
    items = store.items(project_id)
    store.set_priorities({item["id"]: p for item, p in zip(items, priorities(scorer, items))})
    return len(items)


def export(store: Storage, project_ref: int | str, fmt: str, *, drop_ties: bool = False) -> list[dict]:
    project = store.project(project_ref)
    items, labels = store.items(project["id"]), store.labels(project["id"])
    if fmt == "pairwise":
        return pairwise_records(items, labels, with_strength=project["strength_scale"] > 0, drop_ties=drop_ties)
    if fmt == "ranking":
        return ranking_records(items, labels)
    raise Refused(422, "format: must be 'pairwise' or 'ranking'")


def stats(store: Storage, project_ref: int | str) -> dict:
    """Progress per annotator, the agreement figures (overall and per day) and the labelling budget of one project."""
    project = store.project(project_ref)
    progress = store.annotator_progress(project["id"])
    names = [a["name"] for a in progress]
    labels = store.labels(project["id"])
    report = agreement_report(store.items(project["id"]), labels, names)
    budget = budget_report(labels, names)
    report["budget"] = budget["team"]
    figures = {a["annotator"]: a for a in report.pop("annotators")}
    report["annotators"] = [{**p, **budget["annotators"][p["name"]], **figures.get(p["name"], {})} for p in progress]
    for a in report["annotators"]:
        a.pop("annotator", None)
    return {"project": {k: project[k] for k in ("id", "name", "mode", "overlap", "strength_scale", "items",
                                                "gold_items")}, **report}
