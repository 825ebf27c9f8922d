"""The labeling app's pure parts: input records, rankings, export aggregation, agreement, active learning."""

import json

import pytest

from rlhfkit.feedback.app.active import pair_uncertainty, priorities
from rlhfkit.feedback.app.items import (InputError, build_items, load_candidates, mean_positions,
                                        normalize_ranking, pair_values, ranking_from_scores, sample_candidates)
from rlhfkit.feedback.app.report import agreement_report, pairwise_records, ranking_records


def test_candidates_errors_name_file_line_and_field():
    good = '{"prompt": "p", "responses": ["a", "b"], "gold": "B"}\n\n'
    assert load_candidates(good, "c.jsonl") == [{"prompt": "p", "responses": ["a", "b"], "gold": [1, 0]}]
    cases = {
        '{"prompt": "p", "responses": ["a"]}': "c.jsonl:2: field 'responses': must be a list of at least 2",
        '{"responses": ["a", "b"]}': "c.jsonl:2: field 'prompt': is missing",
        '{"prompt": " ", "responses": ["a", "b"]}': "c.jsonl:2: field 'prompt': is empty",
        '{"prompt": "p", "responses": ["a", 3]}': "c.jsonl:2: field 'responses[1]': must be a non-empty string",
        '{"prompt": "p", "responses": ["a", "a"]}': "c.jsonl:2: field 'responses[1]': is identical to responses[0]",
        '{"prompt": "p", "responses": ["a", "b"], "gold": [0]}': "c.jsonl:2: field 'gold': ranking leaves out",
        '{"prompt": "p", "responses": ["a", "b", "c"], "gold": "A"}': "c.jsonl:2: field 'gold': a gold choice",
        '{"prompt": "p", "responses": [}': "c.jsonl:2: not valid JSON",
        '[1, 2]': "c.jsonl:2: expected a JSON object",
    }
    for line, message in cases.items():
        with pytest.raises(InputError) as err:
            load_candidates('{"prompt": "ok", "responses": ["x", "y"]}\n' + line, "c.jsonl")
        assert str(err.value).startswith(message), (line, str(err.value))
    with pytest.raises(InputError, match="holds no records"):
        load_candidates("\n", "empty.jsonl")


def test_conversational_prompts_are_accepted():
    chat = [{"role": "user", "content": "hi"}]
    record = load_candidates(json.dumps({"prompt": chat, "responses": ["a", "b"]}), "c")[0]
    assert record["prompt"] == chat


def test_normalize_ranking():
    assert normalize_ranking([2, [1, 0], [3]], 4) == [2, [0, 1], 3]
    for bad, message in [([0, 0], "more than once"), ([0, 5], "not a response index"), ([0, True], "not a response"),
                         ([0, []], "empty tie group"), ([0], "leaves out response"), ("01", "non-empty list")]:
        with pytest.raises(InputError, match=message):
            normalize_ranking(bad, 2)


def test_pair_values_and_positions():
    # [2, [0, 1], 3]: 2 best, 0 and 1 tied, 3 worst
    v = pair_values([2, [0, 1], 3], 4)
    assert v == {(0, 1): 0, (0, 2): -1, (0, 3): 1, (1, 2): -1, (1, 3): 1, (2, 3): 1}
    assert mean_positions([2, [0, 1], 3], 4) == [1.5, 1.5, 0.0, 3.0]  # ties share positions 1 and 2
    assert ranking_from_scores([1.5, 1.5, 0.0, 3.0]) == [2, [0, 1], 3]


def test_pairwise_mode_splits_k_responses_into_pairs_with_gold():
    records = [{"prompt": "p", "responses": ["a", "b", "c"], "gold": [2, [0, 1]]}]
    items = build_items(records, "pairwise")
    assert [i["responses"] for i in items] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert [i["gold"] for i in items] == [[[0, 1]], [1, 0], [1, 0]]  # a = b; c beats a; c beats b
    assert build_items(records, "ranking") == records


def _items():
    return [{"id": 1, "prompt": "p1", "responses": ["a", "b"], "gold": None},
            {"id": 2, "prompt": "p2", "responses": ["x", "y", "z"], "gold": [0, 1, 2]},
            {"id": 3, "prompt": "p3", "responses": ["u", "v"], "gold": None}]  # never labeled


def _lab(item, who, ranking, strength=None):
    return {"item_id": item, "annotator": who, "ranking": ranking, "strength": strength}


def test_pairwise_export_aggregates_annotators():
    labels = [_lab(1, "ann", [1, 0], 3), _lab(1, "bob", [1, 0], 1), _lab(1, "cat", [[0, 1]])]
    (record,) = pairwise_records(_items(), labels, with_strength=True)
    # P(a better) = (0 + 0 + 0.5) / 3 = 1/6, so chosen = b with label_prob 5/6;
    # strength toward b = (3 + 1 + 0) / 3 = 4/3
    assert record == {"prompt": "p1", "chosen": "b", "rejected": "a", "label_prob": pytest.approx(5 / 6),
                      "annotator": ["ann", "bob", "cat"], "strength": pytest.approx(4 / 3)}
    tie = pairwise_records(_items(), [_lab(1, "ann", [[0, 1]])])
    assert tie[0]["label_prob"] == 0.5 and "strength" not in tie[0]
    assert pairwise_records(_items(), [_lab(1, "ann", [[0, 1]])], drop_ties=True) == []


def test_ranking_export_orders_by_mean_position():
    labels = [_lab(2, "ann", [0, 1, 2]), _lab(2, "bob", [1, 0, 2])]
    (record,) = ranking_records(_items(), labels)
    # positions: x = (0 + 1) / 2, y = (1 + 0) / 2, z = 2 -> x and y tie
    assert record == {"prompt": "p2", "responses": ["x", "y", "z"], "ranking": [[0, 1], 2], "annotator": ["ann", "bob"]}
    pairs = pairwise_records(_items(), labels)
    assert [(p["chosen"], p["rejected"], p["label_prob"]) for p in pairs] == [
        ("x", "y", 0.5), ("x", "z", 1.0), ("y", "z", 1.0)]


def test_exports_pass_the_data_readers(tmp_path):
    records = pytest.importorskip("rlhfkit.data.records")
    labels = [_lab(1, "ann", [1, 0]), _lab(2, "ann", [2, [0, 1]]), _lab(2, "bob", [0, 1, 2])]
    for fmt, rows in [("pairwise", pairwise_records(_items(), labels, with_strength=True)),
                      ("ranking", ranking_records(_items(), labels))]:
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert len(records.load_records(path, fmt)) == len(rows)


def test_agreement_report_by_hand():
    items = _items()
    labels = [_lab(1, "ann", [0, 1]), _lab(1, "bob", [0, 1]), _lab(1, "cat", [1, 0]),
              _lab(2, "ann", [0, 1, 2]), _lab(2, "bob", [0, 2, 1])]
    r = agreement_report(items, labels, ["ann", "bob", "cat"])
    # units: item 1 (ann +1, bob +1, cat -1); item 2 pairs (0,1): +1 +1, (0,2): +1 +1, (1,2): ann +1, bob -1
    assert (r["labels"], r["items_labeled"], r["units"], r["units_with_overlap"]) == (5, 2, 4, 4)
    ann = {a["annotator"]: a for a in r["annotators"]}
    # ann: majority of others on item 1 is a tie (bob +1, cat -1): left out; agrees on 2 of 3 item-2 pairs
    assert (ann["ann"]["consensus_agreement"], ann["ann"]["consensus_units"]) == (round(2 / 3, 4), 3)
    assert (ann["cat"]["consensus_agreement"], ann["cat"]["consensus_units"]) == (0.0, 1)
    # gold of item 2 is [0, 1, 2]: ann 3 / 3 pairs, bob 2 / 3 -> overall 5 / 6
    assert ann["ann"]["gold_accuracy"] == 1.0 and ann["bob"]["gold_accuracy"] == round(2 / 3, 4)
    assert r["gold_accuracy"] == round(5 / 6, 4)
    # κ(ann, bob) on 4 shared units: ann = [+1, +1, +1, +1], bob = [+1, +1, +1, -1]: p_e = 1·(3/4) = 3/4,
    # p_o = 3/4 -> κ = 0.   κ with cat: 1 shared unit, ann +1 vs cat -1: p_o = 0, p_e = 0 -> κ = 0
    kappa = {tuple(k["annotators"]): (k["kappa"], k["units"]) for k in r["kappa"]}
    assert kappa[("ann", "bob")] == (0.0, 4) and kappa[("ann", "cat")] == (0.0, 1)
    assert r["alpha_nominal"] is not None and r["alpha_ordinal"] is not None


class FakeScorer:
    """Reward = the response's length; an ensemble spread only where asked."""

    def __init__(self, with_std=False):
        self.with_std = with_std

    def score(self, prompts, responses):
        mean = [float(len(r)) for r in responses]
        return mean, ([0.1 * len(r) for r in responses] if self.with_std else None)


def test_uncertainty_by_hand():
    assert pair_uncertainty(1.0, 1.0) == 1.0  # P = 0.5: most uncertain
    # r_a - r_b = ln 3 -> P = 3/4 -> 1 - |1.5 - 1| = 0.5
    assert pair_uncertainty(1.0986122886681098, 0.0) == pytest.approx(0.5)
    assert pair_uncertainty(0.0, 0.0, 3.0, 4.0) == 5.0  # sqrt(9 + 16)


def test_priorities_put_close_calls_first():
    items = [{"prompt": "p", "responses": ["a", "aaaaaaaa"]},  # far apart: sure
             {"prompt": "p", "responses": ["aaa", "bbb"]},  # equal: most uncertain
             {"prompt": "p", "responses": ["aa", "bbb"]}]
    p = priorities(FakeScorer(), items, batch_size=2)
    assert p[1] == 1.0 and p[1] > p[2] > p[0]
    s = priorities(FakeScorer(with_std=True), items)
    assert s == pytest.approx([(0.01 + 0.64) ** 0.5, (0.09 + 0.09) ** 0.5, (0.04 + 0.09) ** 0.5])


def test_sample_candidates_uses_the_rollout_api(monkeypatch):
    import sys
    import types

    calls = {}

    def sample_texts(model_dir, prompts, *, n, max_new_tokens, temperature, seed):
        calls.update(model_dir=model_dir, n=n, seed=seed)
        return [["x", "y", "x"], ["same", "same"]][: len(prompts)]

    fake = types.ModuleType("rlhfkit.rollout.sample")
    fake.sample_texts = sample_texts
    monkeypatch.setitem(sys.modules, "rlhfkit.rollout.sample", fake)
    records, dropped = sample_candidates([{"prompt": "p"}, {"prompt": "q"}], "policy/", k=3, seed=7)
    assert records == [{"prompt": "p", "responses": ["x", "y"], "gold": None}] and dropped == 1
    assert calls == {"model_dir": "policy/", "n": 3, "seed": 7}


class RewardScorerLike:
    """rlhfkit.models.reward_model.RewardScorer's shape: score() -> means alone; score_with_std() for ensembles."""

    def __init__(self, members):
        self.ensemble_size = members

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]

    def score_with_std(self, prompts, responses):
        return self.score(prompts, responses), [1.0 if r == "x" else 0.0 for r in responses]


def test_priorities_accept_the_reward_scorer_shape():
    items = [{"prompt": "p", "responses": ["a", "bb"]}, {"prompt": "p", "responses": ["x", "y"]}]
    # one member: P(chosen) nearest 0.5 -> item 2 (equal lengths) is the close call
    assert priorities(RewardScorerLike(1), items) == pytest.approx([pair_uncertainty(1, 2), 1.0])
    # an ensemble: the spread decides -> std ("x") = 1, so item 2 gets sqrt(1 + 0) = 1, item 1 gets 0
    assert priorities(RewardScorerLike(3), items) == [0.0, 1.0]
