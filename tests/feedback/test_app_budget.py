"""The labelling budget: labels per hour, median seconds per item, and agreement per day, by hand."""

from rlhfkit.feedback.app import service, storage
from rlhfkit.feedback.app.items import build_items
from rlhfkit.feedback.app.report import IDLE_CAP_S, agreement_report, budget_report

DAY1, DAY2 = 1_700_000_000.0, 1_700_086_400.0  # 2023-11-14 22:13:20 UTC and 24 h later (2023-11-15)


def lab(item, who, ranking, served, created):
    return {"item_id": item, "annotator": who, "ranking": ranking, "strength": None,
            "served_at": served, "created_at": created}


def test_budget_by_hand():
    labels = [lab(1, "ann", [0, 1], 0.0, 30.0), lab(2, "ann", [0, 1], 100.0, 110.0),
              lab(3, "ann", [0, 1], 200.0, 200.0 + 3600.0),  # left open for an hour
              lab(1, "bob", [0, 1], 0.0, 20.0), lab(2, "bob", [0, 1], None, 50.0)]  # bob's second: time unknown
    report = budget_report(labels, ["ann", "bob", "cat"])
    # ann: 30 s, 10 s, 3600 s -> median 30 s; counted time 30 + 10 + min(3600, 600) = 640 s
    #      labels per hour = 3 * 3600 / 640 = 16.875
    assert IDLE_CAP_S == 600.0
    assert report["annotators"]["ann"] == {"timed_labels": 3, "hours": round(640 / 3600, 4),
                                           "labels_per_hour": 16.875, "median_seconds": 30.0}
    # bob: one timed label of 20 s -> 180 per hour; the untimed one is left out
    assert report["annotators"]["bob"] == {"timed_labels": 1, "hours": round(20 / 3600, 4),
                                           "labels_per_hour": 180.0, "median_seconds": 20.0}
    assert report["annotators"]["cat"] == {"timed_labels": 0, "hours": 0.0, "labels_per_hour": None,
                                           "median_seconds": None}
    # team: 4 timed labels (30, 10, 3600, 20): median (20 + 30) / 2 = 25 s; 4 * 3600 / 660 = 21.8182
    assert report["team"] == {"timed_labels": 4, "hours": round(660 / 3600, 4), "labels_per_hour": 21.8182,
                              "median_seconds": 25.0}


def test_agreement_per_day_shows_a_drifting_annotator():
    items = [{"id": i, "prompt": f"p{i}", "responses": ["a", "b"], "gold": [0, 1] if i == 4 else None}
             for i in range(1, 5)]
    labels = []
    for i in (1, 2):  # day 1: eve agrees with ann and bob on items 1 and 2
        labels += [lab(i, who, [0, 1], None, DAY1 + i) for who in ("ann", "bob", "eve")]
    for i in (3, 4):  # day 2: ann and bob say A again, eve now says B on item 3 and on the gold item 4
        labels += [lab(i, who, [0, 1], None, DAY2 + i) for who in ("ann", "bob")] + [lab(i, "eve", [1, 0], None, DAY2 + i)]
    report = agreement_report(items, labels, ["ann", "bob", "eve"])
    eve = next(a for a in report["annotators"] if a["annotator"] == "eve")
    # eve overall: agrees with the others' majority on 2 of 4 units; gold: 0 of 1
    assert (eve["consensus_agreement"], eve["consensus_units"], eve["gold_accuracy"], eve["gold_units"]) == (0.5, 4, 0.0, 1)
    assert eve["daily"] == [
        {"day": "2023-11-14", "consensus_agreement": 1.0, "consensus_units": 2, "gold_accuracy": None, "gold_units": 0},
        {"day": "2023-11-15", "consensus_agreement": 0.0, "consensus_units": 2, "gold_accuracy": 0.0, "gold_units": 1},
    ]
    ann = next(a for a in report["annotators"] if a["annotator"] == "ann")
    # ann on day 2: the others are split (bob A, eve B) on items 3 and 4: no strict majority, so no units
    assert [(d["day"], d["consensus_agreement"], d["consensus_units"], d["gold_accuracy"]) for d in ann["daily"]] == [
        ("2023-11-14", 1.0, 2, None), ("2023-11-15", None, 0, 1.0)]


def test_stats_time_each_label_from_serving_to_submission(store, monkeypatch):
    now = {"t": 500.0}
    monkeypatch.setattr(storage.time, "time", lambda: now["t"])
    records = [{"prompt": f"p{i}", "responses": ["a", "b"], "gold": None} for i in range(3)]
    project = store.create_project("budget", mode="pairwise", items=build_items(records, "pairwise"))
    ann = store.add_annotator(project["id"], "ann")
    for served, submitted in ((1000.0, 1045.0), (1100.0, 1115.0)):
        now["t"] = served
        item = store.next_assignment(ann)
        now["t"] = submitted
        store.submit(ann, item["id"], key=str(item["id"]), choice="A")
    assert [(lab["served_at"], lab["created_at"]) for lab in store.labels(project["id"])] == [
        (1000.0, 1045.0), (1100.0, 1115.0)]
    stats = service.stats(store, project["id"])
    # 45 s and 15 s: median 30 s; 2 labels in 60 s = 120 per hour
    (a,) = stats["annotators"]
    assert (a["timed_labels"], a["median_seconds"], a["labels_per_hour"]) == (2, 30.0, 120.0)
    assert stats["budget"]["labels_per_hour"] == 120.0
