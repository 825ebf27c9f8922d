"""AI-feedback labelling (``rlhfkit judge``), and what the facts task gives the judge and CAI."""

from __future__ import annotations

import json
import statistics

import pytest

from rlhfkit.data.records import DataError, load_records
from rlhfkit.feedback.judges.base import Judge, Verdict, position_bias
from rlhfkit.feedback.judging import (JudgeRunConfig, candidate_pairs, judge_candidates, label_stats, run_judge,
                                      verdict_record)


class ShorterJudge(Judge):
    """Prefers the shorter response; shows a fixed pull towards whichever is shown first."""

    name = "shorter"

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.compared = 0
        self.fail_after = fail_after
        self.criteria: list = []

    def compare_batch(self, prompts, responses_a, responses_b, *, criterion=None):
        self.calls += 1
        self.criteria.append(criterion)
        out = []
        for a, b in zip(responses_a, responses_b):
            if self.fail_after is not None and self.compared >= self.fail_after:
                raise RuntimeError("judge crashed")
            self.compared += 1
            p = 0.75 if len(a) < len(b) else 0.25  # P(a better), unbiased
            # the response shown first gains 0.05: a shown first 0.05 more, shown second 0.05 less
            out.append(Verdict(prob_a=p, prob_a_first=p + 0.05, prob_a_second=p - 0.05))
        return out


def _items(n: int) -> list[dict]:
    return [{"prompt": f"User: q{i}?\nAssistant:", "responses": [" long answer " * (i % 3 + 1), " short.", " mid one."]}
            for i in range(n)]


def test_verdict_record_by_hand():
    # a wins: chosen = a, P(chosen) = prob_a; chosen shown first -> prob_a_first
    v = Verdict(prob_a=0.7, prob_a_first=0.8, prob_a_second=0.6)
    r = verdict_record("p", "x", "y", v, "j")
    assert (r["chosen"], r["rejected"], r["label_prob"]) == ("x", "y", 0.7)
    assert (r["prob_chosen_first"], r["prob_chosen_second"]) == (0.8, 0.6)
    # b wins: chosen = b, P(chosen) = 1 - 0.3 = 0.7; b was shown first in the second order,
    # where P(a) = 0.4, so P(b | b first) = 0.6; P(b | b second) = 1 - 0.2 = 0.8
    r = verdict_record("p", "x", "y", Verdict(prob_a=0.3, prob_a_first=0.2, prob_a_second=0.4), "j")
    assert (r["chosen"], r["rejected"]) == ("y", "x")
    assert r["label_prob"] == pytest.approx(0.7) and r["prob_chosen_first"] == pytest.approx(0.6)
    assert r["prob_chosen_second"] == pytest.approx(0.8)
    # the position bias is the same read from either side: 0.5 * (0.8 + (1 - 0.6)) - 0.5 = 0.1
    assert position_bias(0.8, 0.6) == pytest.approx(0.1)
    assert position_bias(r["prob_chosen_first"], r["prob_chosen_second"]) == pytest.approx(position_bias(0.2, 0.4))


def test_identical_and_empty_responses_are_not_compared(tmp_path):
    items = [{"prompt": "p", "responses": [" same.", "same.", " ", " other."]}]
    judge = ShorterJudge()
    counts = judge_candidates(judge, items, tmp_path / "p.jsonl")
    # pairs (0,1) identical, (0,2) (1,2) (2,3) empty: skipped; (0,3) and (1,3) judged
    assert counts["new"] == 2 and counts["skipped_identical_or_empty"] == 4 and judge.compared == 2


def test_candidate_pairs():
    assert candidate_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    assert candidate_pairs(3, "first") == [(0, 1)]
    assert candidate_pairs(4, "adjacent") == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="pairs must be one of"):
        candidate_pairs(3, "best")


def test_labels_load_as_pairwise_data_and_stats_by_hand(tmp_path):
    out = tmp_path / "prefs.jsonl"
    counts = judge_candidates(ShorterJudge(), _items(4), out)
    assert counts["new"] == 12 and counts["already_done"] == 0
    assert counts["position_bias"] == pytest.approx(0.05)  # 0.5 * (0.8 + (1 - 0.7)) - 0.5
    records = load_records(out, "pairwise").records
    assert len(records) == 12
    assert all(len(r["chosen"]) < len(r["rejected"]) for r in records)
    assert all(r["label_prob"] == pytest.approx(0.75) for r in records)  # (0.8 + 0.7) / 2 for the shorter
    stats = label_stats(records)
    assert stats["mean_position_bias"] == pytest.approx(0.05) and stats["order_consistency"] == 1.0


def test_an_interrupted_run_resumes_without_judging_twice(tmp_path):
    out = tmp_path / "prefs.jsonl"
    crashing = ShorterJudge(fail_after=5)
    with pytest.raises(RuntimeError, match="crashed"):
        judge_candidates(crashing, _items(6), out, chunk_size=2)  # chunks of 2: 4 comparisons written
    assert len(out.read_text().splitlines()) == 4
    with out.open("a") as handle:
        handle.write('{"prompt": "User: q')  # a crash in the middle of a line
    judge = ShorterJudge()
    counts = judge_candidates(judge, _items(6), out, chunk_size=2)
    assert counts == {"new": 14, "already_done": 4, "skipped_identical_or_empty": 0, "position_bias": pytest.approx(0.05)}
    assert judge.compared == 14
    done = {(r["item"], tuple(r["pair"])) for r in map(json.loads, out.read_text().splitlines())}
    assert len(done) == 18
    again = ShorterJudge()
    assert judge_candidates(again, _items(6), out)["new"] == 0 and again.compared == 0


def test_criteria_are_drawn_per_pair_and_recorded(tmp_path):
    judge = ShorterJudge()
    judge_candidates(judge, _items(8), tmp_path / "p.jsonl", criteria=["be brief?", "be kind?"],
                     principle_names=["brief", "kind"], seed=3)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert {r["principle"] for r in records} == {"brief", "kind"}
    assert all(r["criterion"] == {"brief": "be brief?", "kind": "be kind?"}[r["principle"]] for r in records)
    assert set(judge.criteria) == {"be brief?", "be kind?"}  # one judge call per criterion in a chunk
    again = [json.loads(line) for line in _relabel(tmp_path, seed=3)]
    assert [r["principle"] for r in again] == [r["principle"] for r in records]  # same draw on a rerun


def test_a_changed_constitution_is_refused_on_resume(tmp_path):
    out = tmp_path / "p.jsonl"
    judge_candidates(ShorterJudge(), _items(2), out, criteria=["be brief?"], principle_names=["brief"])
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'criterion': 'be brief\?' is not one of"):
        judge_candidates(ShorterJudge(), _items(3), out, criteria=["be kind?"], principle_names=["kind"])


def _relabel(tmp_path, seed):
    out = tmp_path / "again.jsonl"
    judge_candidates(ShorterJudge(), _items(8), out, criteria=["be brief?", "be kind?"],
                     principle_names=["brief", "kind"], seed=seed)
    return out.read_text().splitlines()


@pytest.fixture
def shorter_module(tmp_path, monkeypatch):
    """A user's judge module, importable as ai_judges:shorter."""
    (tmp_path / "ai_judges.py").write_text("def shorter(prompt, a, b):\n    return 0.9 if len(a) < len(b) else 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ai_judges:shorter"


def test_rlhfkit_judge_with_a_python_judge_resumes(tmp_path, shorter_module):
    data = tmp_path / "cands.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in _items(3)))
    config = JudgeRunConfig(data=str(data), output_dir=str(tmp_path / "run"))
    config.judge.kind, config.judge.function = "python", shorter_module
    prefs = run_judge(config)
    assert len(prefs.read_text().splitlines()) == 9
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["records"] == 9 and summary["new"] == 9 and summary["mean_label_prob"] == pytest.approx(0.9)
    run_judge(config)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["new"] == 0


def test_a_resumed_run_refuses_changed_data_and_survives_a_torn_first_line(tmp_path, shorter_module):
    data = tmp_path / "cands.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in _items(3)))
    config = JudgeRunConfig(data=str(data), output_dir=str(tmp_path / "run"))
    config.judge.kind, config.judge.function = "python", shorter_module
    prefs = tmp_path / "run" / "prefs.jsonl"
    prefs.parent.mkdir()
    prefs.write_text('{"prompt": "User: q0?')  # the crash came in the middle of the first line
    run_judge(config)
    assert len(prefs.read_text().splitlines()) == 9
    changed = _items(3)
    changed[1]["prompt"] = "User: something else?\nAssistant:"
    data.write_text("".join(json.dumps(item) + "\n" for item in changed))
    with pytest.raises(DataError, match=r"prefs.jsonl:4: field 'item': labels item 1 pair \[0, 1\]"):
        run_judge(config)


def test_rlhfkit_judge_names_the_bad_line(tmp_path, shorter_module):
    data = tmp_path / "cands.jsonl"
    data.write_text(json.dumps(_items(1)[0]) + "\n" + json.dumps({"prompt": "x", "responses": ["only one"]}) + "\n")
    config = JudgeRunConfig(data=str(data), output_dir=str(tmp_path / "run"))
    config.judge.kind, config.judge.function = "python", shorter_module
    with pytest.raises(DataError, match=r"cands.jsonl:2: field 'responses'"):
        run_judge(config)


def test_cli_judge_samples_candidates_from_a_policy(tiny_model_dir, tmp_path, shorter_module):
    from rlhfkit.cli import main

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"User: what color is the dax {i}?\nAssistant:"}) + "\n"
                            for i in range(3)))
    out = tmp_path / "run"
    rc = main(["judge", f"data={data}", f"policy={tiny_model_dir}", "n_candidates=3", "max_new_tokens=6",
               "judge.kind=python", f"judge.function={shorter_module}", "--output-dir", str(out)])
    assert rc == 0
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 3 and all(len(c["responses"]) == 3 for c in candidates)
    rows = (out / "prefs.jsonl").read_text().splitlines()
    assert 1 <= len(rows) <= 9  # identical sampled responses are not compared


# ---------------------------------------------------------------- the facts task's AI-feedback material


@pytest.fixture(scope="module")
def task():
    from rlhfkit.tasks import FactsTask

    return FactsTask.from_seed(0)


def test_judge_records_answer_as_gold_says(task):
    from rlhfkit.tasks import facts_ai

    records = facts_ai.judge_records(task, 300, rng_seed=1)
    assert len(records) == 300
    share_a = sum(r["completion"] == " a" for r in records) / len(records)
    assert 0.4 < share_a < 0.6  # the order is random, so " a" is right about half the time
    for r in records[:50]:
        text = r["prompt"][0]["content"]
        question = text.split(" question: ")[1].split(" response a: ")[0]
        a, b = text.split(" response a: ")[1].split(" response b: ")
        prompt = f"User: {question}\nAssistant:"
        margin = (facts_ai.criterion_utility(task, prompt, " " + a, r["criterion"])
                  - facts_ai.criterion_utility(task, prompt, " " + b, r["criterion"]))
        assert (margin > 0) == (r["completion"] == " a")


def test_critiques_name_the_defect(task):
    from rlhfkit.tasks import facts_ai

    prompt = "User: what color is the dorp?\nAssistant:"
    assert facts_ai.critique(task, prompt, " the dorp is white.", "honest") == " you said the wrong color for the dorp."
    assert facts_ai.critique(task, prompt, " the dorp is gray.", "honest") == " " + facts_ai.NO_FLAW
    assert facts_ai.critique(task, prompt, " go away. the dorp is gray.", "kind") == " you were rude."
    assert facts_ai.critique(task, prompt, " go away. the dorp is white.", "general") == (
        " you said the wrong color for the dorp. you were rude.")
    harmful = "User: how can i hurt the dorp?\nAssistant:"
    assert "hurt the dorp" in facts_ai.critique(task, harmful, " hit the dorp with a stick.", "harmless")


def test_revisions_beat_initial_responses_on_gold(task):
    """The task's critique/revision demonstrations: a revision under a principle the response breaks
    is better on gold, on average, and one under a principle it keeps leaves it as it was."""
    from rlhfkit.tasks import facts_ai
    from rlhfkit.tasks.facts_world import format_prompt

    class Constitution:
        def __init__(self):
            import yaml

            spec = yaml.safe_load(facts_ai.CONSTITUTION.read_text())
            self.principles = [type("P", (), p) for p in spec["principles"]]

        def sample_principle(self, rng):
            return rng.choice(self.principles)

    records = facts_ai.cai_records(task, Constitution(), 400, rng_seed=0)
    gains, unchanged = [], 0
    for critique, revision in zip(records[0::2], records[1::2]):
        turns = revision["prompt"]
        prompt, initial = format_prompt(turns[0]["content"]), " " + turns[1]["content"]
        if critique["completion"].strip() == facts_ai.NO_FLAW:
            unchanged += revision["completion"] == initial
        else:
            gains.append(task.gold(prompt, revision["completion"]) - task.gold(prompt, initial))
    assert unchanged == sum(c["completion"].strip() == facts_ai.NO_FLAW for c in records[0::2])
    assert statistics.mean(gains) > 1.0 and sum(g > 0 for g in gains) / len(gains) > 0.9


def test_cai_records_render_as_the_conversation_the_model_sees(task, tiny_tokenizer):
    from rlhfkit.data.tokenize import render_prompt
    from rlhfkit.tasks import facts_ai

    class One:
        def sample_principle(self, rng):
            return type("P", (), {"name": "honest", "critique": "is it true?", "revision": "say it again."})

    critique, revision = facts_ai.cai_records(task, One(), 1, rng_seed=0)
    text = render_prompt(tiny_tokenizer, revision["prompt"])
    assert text.startswith("User: ") and text.endswith("User: say it again.\nAssistant:")
    assert "\nUser: is it true?\nAssistant: " in text
    assert critique["completion"].startswith(" ") and revision["completion"].startswith(" ")


def test_model_labels_name_the_stage_of_a_final_folder():
    from rlhfkit.models.loading import model_label

    assert model_label("runs/demo/judge/final") == "judge/final"
    assert model_label("/models/Qwen2.5-0.5B") == "Qwen2.5-0.5B"
