"""What the labels add up to: the export files and the agreement figures.

Export (the formats ``rlhfkit reward`` and ``rlhfkit dpo`` read):
- pairwise: ``{"prompt", "chosen", "rejected", "label_prob", "annotator": [names]}`` per pair of
  responses that someone labeled; ``label_prob`` = P(chosen better) averaged over annotators, a tie
  counting 0.5; ``chosen`` is the side the annotators favoured. Pairwise projects with a strength
  scale add ``"strength"``: the mean strength towards ``chosen`` (a tie counts 0, the other side -s);
  not ``"margin"``, since ``rlhfkit reward`` refuses a record with both ``margin`` and ``label_prob``.
- ranking: ``{"prompt", "responses", "ranking", "annotator": [names]}`` per labeled item, ordered by
  each response's mean position over annotators (equal means are a tie).

Agreement: every labeled pair of responses (i, j) of an item is a unit whose value from each
annotator is +1 (i better), 0 (tie) or -1 (j better). Over these units: Krippendorff's α (nominal,
and ordinal on -1 < 0 < +1), Cohen's κ per pair of annotators on the units both labeled, each
annotator's agreement with the majority of the others, and accuracy on gold items; the last two also
per day (UTC) of labelling, so an annotator who drifts or grows careless shows up.

Budget: each label's time is from its item being served (shown, or shown again after a reload) to
its submission. Median seconds per item uses these times as they are; labels per hour divides the
labels by their summed time with each item capped at ``IDLE_CAP_S``, so an item left open over lunch
does not count as hours of work. Labels whose serving time is unknown (made before v2) are left out.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from datetime import datetime, timezone
from itertools import combinations

from rlhfkit.feedback.agreement import cohen_kappa, krippendorff_alpha
from rlhfkit.feedback.app.items import mean_positions, pair_values, ranking_from_scores


def _by_item(items: list[dict], labels: list[dict]) -> list[tuple[dict, list[dict]]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for label in labels:
        grouped[label["item_id"]].append(label)
    return [(item, grouped[item["id"]]) for item in items if grouped[item["id"]]]


def pairwise_records(items: list[dict], labels: list[dict], *, with_strength: bool = False,
                     drop_ties: bool = False) -> list[dict]:
    """One record per labeled pair of responses (see the module docstring)."""
    records = []
    for item, item_labels in _by_item(items, labels):
        k = len(item["responses"])
        votes = [(lab, pair_values(lab["ranking"], k)) for lab in item_labels]
        for i, j in combinations(range(k), 2):
            p_i = sum((v[(i, j)] + 1) / 2 for _, v in votes) / len(votes)  # +1 -> 1, tie -> 0.5, -1 -> 0
            signed = [v[(i, j)] * (lab["strength"] or 1) for lab, v in votes]
            toward_i = p_i > 0.5 or (p_i == 0.5 and sum(signed) >= 0)
            if drop_ties and p_i == 0.5:
                continue
            better, worse = (i, j) if toward_i else (j, i)
            record = {"prompt": item["prompt"], "chosen": item["responses"][better],
                      "rejected": item["responses"][worse], "label_prob": p_i if toward_i else 1.0 - p_i,
                      "annotator": sorted({lab["annotator"] for lab in item_labels})}
            if with_strength:
                record["strength"] = (1 if toward_i else -1) * sum(signed) / len(signed)
            records.append(record)
    return records


def ranking_records(items: list[dict], labels: list[dict]) -> list[dict]:
    """One record per labeled item: responses ordered by their mean position over annotators."""
    records = []
    for item, item_labels in _by_item(items, labels):
        k = len(item["responses"])
        positions = [mean_positions(lab["ranking"], k) for lab in item_labels]
        mean = [sum(p[r] for p in positions) / len(positions) for r in range(k)]
        records.append({"prompt": item["prompt"], "responses": item["responses"],
                        "ranking": ranking_from_scores(mean),
                        "annotator": sorted({lab["annotator"] for lab in item_labels})})
    return records


IDLE_CAP_S = 600.0
"""at most this many seconds of one item count towards labels per hour"""


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 4)


def _share(right: int, n: int) -> float | None:
    return _finite(right / n if n else math.nan)


def _day(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, tz=timezone.utc).date().isoformat()


def budget_report(labels: list[dict], annotators: list[str], *, idle_cap_s: float = IDLE_CAP_S) -> dict:
    """Labels per hour and median seconds per item, per annotator and for the whole team (see the module
    docstring). ``labels`` need ``annotator``, ``created_at`` and ``served_at`` (None if unknown)."""
    seconds: dict[str, list[float]] = {name: [] for name in annotators}
    for lab in labels:
        if lab.get("served_at") is not None and lab["annotator"] in seconds:
            seconds[lab["annotator"]].append(max(0.0, lab["created_at"] - lab["served_at"]))

    def figures(times: list[float]) -> dict:
        spent = sum(min(t, idle_cap_s) for t in times)
        return {"timed_labels": len(times), "hours": round(spent / 3600, 4),
                "labels_per_hour": _finite(3600 * len(times) / spent if spent else math.nan),
                "median_seconds": _finite(statistics.median(times) if times else math.nan)}

    return {"team": figures([t for times in seconds.values() for t in times]),
            "annotators": {name: figures(times) for name, times in seconds.items()}}


def agreement_report(items: list[dict], labels: list[dict], annotators: list[str]) -> dict:
    """The agreement figures shown on the admin page and written by ``rlhfkit label stats``."""
    units: dict[tuple[int, int, int], dict[str, int]] = defaultdict(dict)  # (item, i, j) -> {annotator: value}
    gold: dict[tuple[int, int, int], int] = {}
    by_id = {item["id"]: item for item in items}
    for lab in labels:
        item = by_id[lab["item_id"]]
        for (i, j), v in pair_values(lab["ranking"], len(item["responses"])).items():
            units[(item["id"], i, j)][lab["annotator"]] = v
    for item in items:
        if item["gold"] is not None:
            for (i, j), v in pair_values(item["gold"], len(item["responses"])).items():
                gold[(item["id"], i, j)] = v

    values = [list(u.values()) for u in units.values()]
    kappas = []
    for a, b in combinations(annotators, 2):
        shared = [u for u in units.values() if a in u and b in u]
        kappas.append({"annotators": [a, b], "units": len(shared),
                       "kappa": _finite(cohen_kappa([u[a] for u in shared], [u[b] for u in shared]))})
    # (annotator, day) -> [agree, consensus units, gold right, gold units]; day None: the label's time is unknown
    tally: dict[tuple[str, str | None], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    day_of = {(lab["item_id"], lab["annotator"]): _day(lab.get("created_at")) for lab in labels}
    for key, u in units.items():
        for name, value in u.items():
            t = tally[(name, day_of[(key[0], name)])]
            others = Counter(v for who, v in u.items() if who != name).most_common(2)
            if others and (len(others) == 1 or others[0][1] > others[1][1]):  # a strict majority of the others
                t[0] += value == others[0][0]
                t[1] += 1
            if key in gold:
                t[2] += value == gold[key]
                t[3] += 1
    per_annotator = []
    for name in annotators:
        days = sorted((day, t) for (who, day), t in tally.items() if who == name and day is not None)
        agree, total, gold_right, gold_n = (sum(t[i] for (who, _), t in tally.items() if who == name) for i in range(4))
        per_annotator.append({"annotator": name, "consensus_agreement": _share(agree, total), "consensus_units": total,
                              "gold_accuracy": _share(gold_right, gold_n), "gold_units": gold_n,
                              "daily": [{"day": day, "consensus_agreement": _share(t[0], t[1]), "consensus_units": t[1],
                                         "gold_accuracy": _share(t[2], t[3]), "gold_units": t[3]} for day, t in days]})
    gold_pairs = [(u[name], gold[key]) for key, u in units.items() if key in gold for name in u]
    return {
        "labels": len(labels),
        "items_labeled": len({lab["item_id"] for lab in labels}),
        "units": len(units),
        "units_with_overlap": sum(len(v) >= 2 for v in values),
        "alpha_nominal": _finite(krippendorff_alpha(values, level="nominal")),
        "alpha_ordinal": _finite(krippendorff_alpha(values, level="ordinal")),
        "gold_accuracy": _finite(sum(a == g for a, g in gold_pairs) / len(gold_pairs) if gold_pairs else math.nan),
        "kappa": kappas,
        "annotators": per_annotator,
    }
