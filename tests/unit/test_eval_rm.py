"""eval-rm's metrics and record reading, checked against numbers worked out by hand."""

import json
import math

import pytest

from rlhfkit.data.records import DataError
from rlhfkit.evaluate.metrics import expected_calibration_error, pairwise_ece, sigmoid
from rlhfkit.evaluate.rm_data import load_rm_records
from rlhfkit.evaluate.rm_metrics import (accuracy_by_group, best_of_k_credit, ece_from_bins, ensemble_disagreement,
                                         ensemble_rewards, pairwise_probs, pairwise_reliability_bins, reliability_bins,
                                         strict_accuracy)
from rlhfkit.evaluate.rm_run import Responses, metric_block


# ---------------------------------------------------------------- accuracy


def test_strict_accuracy_counts_a_tie_as_wrong():
    # pairs: 2 > 1 right, 1 = 1 tie (wrong), 0 < 3 wrong, 5 > -5 right -> 2 / 4
    assert strict_accuracy([2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 3.0, -5.0]) == pytest.approx(2 / 4)
    assert strict_accuracy([1.0, 1.0], [1.0, 1.0]) == 0.0  # a constant reward model scores 0, not 0.5
    assert math.isnan(strict_accuracy([], []))
    with pytest.raises(ValueError):
        strict_accuracy([1.0], [])


def test_best_of_k_credit_by_hand():
    assert best_of_k_credit([2.0], [1.0, 0.5, -3.0]) == 1.0  # strictly above every rejected
    assert best_of_k_credit([1.0], [2.0, 0.0, 0.0]) == 0.0  # one rejected above it
    assert best_of_k_credit([1.0], [1.0, 0.0, 0.0]) == pytest.approx(1 / 2)  # 2 tied at the top
    assert best_of_k_credit([1.0], [1.0, 1.0, 0.0]) == pytest.approx(1 / 3)  # 3 tied at the top -> 1/3
    assert best_of_k_credit([1.0], [1.0, 1.0, 1.0]) == pytest.approx(1 / 4)  # all 4 tied
    # a tie below the top earns nothing: 1 = 1 but 2 is above both
    assert best_of_k_credit([1.0], [1.0, 2.0]) == 0.0
    # several chosen (RewardBench 2's Ties subset): top-tied are chosen 3, chosen 3, rejected 3 -> 2/3
    assert best_of_k_credit([3.0, 3.0, 0.0], [3.0, 1.0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        best_of_k_credit([1.0], [])


def test_accuracy_by_group_subsets_and_list_annotators():
    credits = [1.0, 0.0, 1.0, 1 / 3, 1.0]
    subsets = ["chat", "chat", "safety", "safety", None]
    # chat: (1 + 0) / 2 ; safety: (1 + 1/3) / 2 ; the record without a subset is in no group
    assert accuracy_by_group(credits, subsets) == {"chat": {"accuracy": pytest.approx(0.5), "n": 2},
                                                   "safety": {"accuracy": pytest.approx(2 / 3), "n": 2}}
    annotators = [["ann-a", "ann-b"], "ann-a", ["ann-b", "ann-c", "ann-b"], None, 7]
    # ann-a: records 0, 1 -> (1 + 0) / 2 ; ann-b: records 0, 2 (listed twice in 2, counted once) -> 1
    # ann-c: record 2 -> 1 ; "7": record 4 -> 1
    assert accuracy_by_group(credits, annotators) == {
        "7": {"accuracy": 1.0, "n": 1}, "ann-a": {"accuracy": 0.5, "n": 2},
        "ann-b": {"accuracy": 1.0, "n": 2}, "ann-c": {"accuracy": 1.0, "n": 1}}


# ---------------------------------------------------------------- calibration


def test_reliability_bins_on_five_probabilities():
    probs = [0.05, 0.15, 0.12, 0.75, 1.0]
    labels = [0, 1, 0, 1, 1]
    table = reliability_bins(probs, labels, n_bins=4)  # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    assert [b["count"] for b in table] == [3, 0, 0, 2]
    assert [(b["low"], b["high"]) for b in table] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    # bin 0: confidence (0.05 + 0.15 + 0.12) / 3 = 0.32 / 3, accuracy 1 / 3
    assert table[0]["confidence"] == pytest.approx(0.32 / 3) and table[0]["accuracy"] == pytest.approx(1 / 3)
    assert table[1]["confidence"] is None and table[1]["accuracy"] is None  # empty: null in JSON
    # bin 3 (0.75 and 1.0, which falls in the last bin): confidence 0.875, accuracy 1
    assert table[3]["confidence"] == pytest.approx(0.875) and table[3]["accuracy"] == 1.0
    # ECE = 3/5 · |1/3 − 0.32/3| + 2/5 · |1 − 0.875| = 0.6 · 0.68/3 + 0.4 · 0.125 = 0.136 + 0.05 = 0.186
    assert ece_from_bins(table) == pytest.approx(0.186)
    assert ece_from_bins(table) == pytest.approx(expected_calibration_error(probs, labels, n_bins=4))
    with pytest.raises(ValueError):
        reliability_bins([1.5], [1])


def test_pairwise_reliability_counts_both_orders():
    probs, labels = [0.9, 0.6, 0.3], [1.0, 0.5, 1.0]
    table = pairwise_reliability_bins(probs, labels, n_bins=2)
    # entries: (0.9, 1), (0.6, 0.5), (0.3, 1), then (0.1, 0), (0.4, 0.5), (0.7, 0)
    # bin [0, .5): 0.3, 0.1, 0.4 -> confidence 0.8/3, accuracy (1 + 0 + 0.5)/3 = 0.5
    # bin [.5, 1]: 0.9, 0.6, 0.7 -> confidence 2.2/3, accuracy (1 + 0.5 + 0)/3 = 0.5
    assert [b["count"] for b in table] == [3, 3]
    assert table[0]["confidence"] == pytest.approx(0.8 / 3) and table[0]["accuracy"] == pytest.approx(0.5)
    assert table[1]["confidence"] == pytest.approx(2.2 / 3) and table[1]["accuracy"] == pytest.approx(0.5)
    # ECE = 1/2 · |0.5 − 0.8/3| + 1/2 · |0.5 − 2.2/3| = 1/2 · 0.7/3 + 1/2 · 0.7/3 = 0.7/3
    assert ece_from_bins(table) == pytest.approx(0.7 / 3)
    assert ece_from_bins(table) == pytest.approx(pairwise_ece(probs, labels, n_bins=2))


def test_pairwise_probs_with_temperature():
    # σ(2 / 2) = σ(1) = 0.731058..., σ(0) = 0.5, σ(-4 / 2) = σ(-2) = 0.119202...
    assert pairwise_probs([2.0, 0.0, -4.0], temperature=2.0) == pytest.approx([0.7310586, 0.5, 0.1192029])
    assert pairwise_probs([1.0]) == pytest.approx([sigmoid(1.0)])
    with pytest.raises(ValueError):
        pairwise_probs([1.0], temperature=0.0)


# ---------------------------------------------------------------- ensembles


def test_ensemble_rewards_mean_minus_lambda_std():
    members = [[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]]
    # response 0: mean 2, population std 1 ; response 1: 0, 0 ; response 2: 2, 0
    assert ensemble_rewards(members) == pytest.approx([2.0, 0.0, 2.0])
    assert ensemble_rewards(members, ensemble_lambda=0.5) == pytest.approx([2.0 - 0.5, 0.0, 2.0])
    with pytest.raises(ValueError):
        ensemble_rewards([[1.0], [1.0, 2.0]])


def test_ensemble_disagreement_by_hand():
    members = [[1.0, 0.0, 2.0, 5.0],
               [3.0, 0.0, 2.0, 1.0],
               [2.0, 0.0, 2.0, 3.0]]
    # std per response: [1,3,2] -> sqrt(2/3); [0,0,0] -> 0; [2,2,2] -> 0; [5,1,3] -> sqrt(8/3)
    pairs = [(0, 1), (2, 1), (0, 2), (3, 0)]
    # (0,1): 1-0 > 0, 3-0 > 0, 2-0 > 0 -> agree ; (2,1): all +2 -> agree
    # (0,2): -1, +1, 0 -> disagree ; (3,0): +4, -2, +1 -> disagree  => 2 / 4
    out = ensemble_disagreement(members, pairs)
    assert out["reward_std_mean"] == pytest.approx((math.sqrt(2 / 3) + math.sqrt(8 / 3)) / 4)
    assert out["pair_order_disagreement"] == pytest.approx(0.5)
    same = ensemble_disagreement([[1.0, 2.0], [1.0, 2.0]], [(0, 1)])
    assert same == {"reward_std_mean": 0.0, "pair_order_disagreement": 0.0}


# ---------------------------------------------------------------- records and one metric block


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_metric_block_by_hand(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "a", "rejected": "b", "subset": "chat", "annotator": ["x", "y"], "label_prob": 0.75},
        {"prompt": "p1", "chosen": "a", "rejected": "c", "subset": "chat", "annotator": "x"},  # reuses p1/a
        {"prompt": "p2", "chosen": ["d"], "rejected": ["e", "f", "g"], "subset": "math"},
    ]
    records = load_rm_records(_write_jsonl(tmp_path / "d.jsonl", rows))
    items = Responses.of(records)
    assert items.texts == ["a", "b", "c", "d", "e", "f", "g"]  # p1/a is scored once
    rewards = [1.0, 0.0, 1.0, 2.0, 2.0, 2.0, -1.0]
    block = metric_block(records, items, rewards, lengths=[1, 2, 3, 4, 5, 6, 7], temperature=2.0, n_bins=10)
    # pairs: a 1 > b 0 right; a 1 = c 1 tie, wrong -> 1/2 ; best-of-K: d, e, f tied at 2 -> 1/3
    assert block["accuracy"] == pytest.approx(0.5) and block["pairs"] == 2 and block["ties"] == 1
    assert block["best_of_k_accuracy"] == pytest.approx(1 / 3) and block["best_of_k_records"] == 1
    assert block["accuracy_per_subset"] == {"chat": {"accuracy": 0.5, "n": 2}, "math": {"accuracy": pytest.approx(1 / 3), "n": 1}}
    assert block["accuracy_per_annotator"] == {"x": {"accuracy": 0.5, "n": 2}, "y": {"accuracy": 1.0, "n": 1}}
    # calibration pairs: (a, b) margin 1 label 0.75; (a, c) 0 label 1; (d, e) 0, (d, f) 0, (d, g) 3, label 1
    margins, labels = [1.0, 0.0, 0.0, 0.0, 3.0], [0.75, 1.0, 1.0, 1.0, 1.0]
    assert block["ece"] == pytest.approx(pairwise_ece([sigmoid(m) for m in margins], labels))
    assert block["ece_temperature"] == pytest.approx(pairwise_ece([sigmoid(m / 2.0) for m in margins], labels))
    assert sum(b["count"] for b in block["reliability"]) == 2 * 5
    assert block["temperature"] == 2.0
    # every response of every record: a, b | a, c | d, e, f, g (a counts twice)
    # rewards 1 0 1 1 2 2 2 -1 -> mean 8 / 8 ; lengths 1 2 1 3 4 5 6 7 (mean 29/8)
    # Σ dx·dy = 1.625 + 0.375 + 1.375 + 2.375 - 2 · 3.375 = -1 ; Σ dx² = 35.875 ; Σ dy² = 8
    assert block["reward_mean"] == pytest.approx(1.0)
    assert block["length_correlation"] == pytest.approx(-1 / math.sqrt(35.875 * 8))


def test_records_missing_or_empty_fields_name_file_line_and_field(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "subset": "s"}
    cases = [
        ({"prompt": "p", "rejected": "b", "subset": "s"}, "chosen", "is missing"),
        ({**good, "prompt": "  "}, "prompt", "is empty"),
        ({**good, "rejected": ["x", ""]}, "rejected[1]", "is empty"),
        ({**good, "chosen": "a", "rejected": []}, "rejected", "empty list"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "subset", "is missing"),
        ({**good, "subset": ""}, "subset", "non-empty"),
        ({**good, "rejected": ["x", "y"], "label_prob": 0.8}, "label_prob", "best-of-K"),
    ]
    for bad, field, words in cases:
        path = _write_jsonl(tmp_path / "bad.jsonl", [good, bad])
        with pytest.raises(DataError, match=words) as err:
            load_rm_records(path)
        assert (err.value.source, err.value.line, err.value.field) == (str(path), 2, field), bad


def test_records_from_json_csv_and_parquet(tmp_path):
    rows = [{"prompt": "p1", "chosen": "a", "rejected": "b", "subset": "chat"},
            {"prompt": "p2", "chosen": "c", "rejected": "d", "subset": "math"}]
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(rows))
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,chosen,rejected,subset\np1,a,b,chat\np2,c,d,math\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet_path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)
    import datasets

    dataset_dir = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(dataset_dir))
    for path in (json_path, csv_path, parquet_path, dataset_dir):
        records = load_rm_records(path)
        assert [(r.prompt, r.chosen, r.rejected, r.subset) for r in records] == [
            ("p1", ["a"], ["b"], "chat"), ("p2", ["c"], ["d"], "math")], path
    # a CSV's line is the file's line (the header is line 1)
    csv_path.write_text("prompt,chosen,rejected,subset\np1,a,b,chat\np2,,d,math\n")
    with pytest.raises(DataError) as err:
        load_rm_records(csv_path)
    assert (err.value.line, err.value.field) == (3, "chosen")


def test_best_of_k_records_and_messages(tmp_path):
    chat = [{"role": "assistant", "content": "hi"}]
    rows = [{"prompt": "p", "chosen": "a", "rejected": ["b", "c"]},  # RewardBench 2: one chosen, a list rejected
            {"prompt": "p", "chosen": ["a"], "rejected": ["b"]},  # one against one: a pair
            {"prompt": [{"role": "user", "content": "q"}], "chosen": chat, "rejected": [chat, [{"role": "assistant", "content": "yo"}]]}]
    records = load_rm_records(_write_jsonl(tmp_path / "bok.jsonl", rows))
    assert [r.is_pair for r in records] == [False, True, False]
    assert records[2].chosen == [chat] and len(records[2].rejected) == 2


def test_public_pair_layouts_are_normalised(tmp_path):
    """An Anthropic HH row (no prompt; whole transcripts) is split into prompt and completions as the
    training stages do (rlhfkit.data.layouts)."""
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    (record,) = load_rm_records(_write_jsonl(tmp_path / "hh.jsonl", [row]))
    assert (record.prompt, record.chosen, record.rejected) == ("\n\nHuman: hi\n\nAssistant:", [" hello there"], [" go away"])
