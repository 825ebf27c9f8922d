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
annotator's agreement with the majority of the others, and accuracy on gold items.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
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


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 4)


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
    per_annotator = []
    for name in annotators:
        agree = total = gold_right = gold_n = 0
        for key, u in units.items():
            if name not in u:
                continue
            others = Counter(v for who, v in u.items() if who != name).most_common(2)
            if others and (len(others) == 1 or others[0][1] > others[1][1]):  # a strict majority of the others
                total += 1
                agree += u[name] == others[0][0]
            if key in gold:
                gold_n += 1
                gold_right += u[name] == gold[key]
        per_annotator.append({"annotator": name, "consensus_agreement": _finite(agree / total if total else math.nan),
                              "consensus_units": total,
                              "gold_accuracy": _finite(gold_right / gold_n if gold_n else math.nan),
                              "gold_units": gold_n})
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
