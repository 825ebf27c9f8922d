"""Constitutional AI: the constitution file, the critique → revision phase, ``rlhfkit constitution``."""

from __future__ import annotations

import json
import random

import pytest

from rlhfkit.feedback.constitution import (ConstitutionError, critique_and_revise, load_constitution,
                                           prompt_messages, revision_pairs, sft_records)
from rlhfkit.feedback.constitution.supervised import CAIExample, critique_turns

GOOD = """\
name: tiny
principles:
  - name: honest
    critique: is it true?
    revision: say it again.
  - name: kind
    critique: was it rude?
    revision: say it kindly.
comparison_principles:
  - name: overall
    text: which is better?
"""


def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_and_task_constitutions_load():
    default = load_constitution()
    assert len(default.principles) >= 8 and len(default.comparison_principles) >= 6
    assert all(p.critique and p.revision for p in default.principles)
    assert load_constitution("default") == default
    from rlhfkit.feedback.constitution import DEFAULT_CONSTITUTION

    assert "principles:" in DEFAULT_CONSTITUTION.read_text(encoding="utf-8")  # shipped as package data
    from rlhfkit.tasks.facts_ai import CONSTITUTION

    facts = load_constitution(CONSTITUTION)
    assert {p.name for p in facts.principles} >= {"general", "honest", "harmless", "kind", "brief"}


@pytest.mark.parametrize("bad, line, words", [
    # the second principle lacks its revision request: the error points at that entry (line 6)
    (GOOD.replace("    revision: say it kindly.\n", ""), 6, ["principles[1]", "missing field 'revision'"]),
    ("comparison_principles: []\n", 1, ["missing field 'principles'"]),
    (GOOD.replace("critique: was it rude?", "critque: was it rude?"), 7, ["principles[1]", "unknown field 'critque'"]),
    (GOOD.replace("say it again.", '""'), 5, ["principles[0].revision", "is empty"]),
    (GOOD.replace("name: kind", "name: honest"), 6, ["principles[1].name", "duplicate name 'honest'"]),
    (GOOD.replace("critique: is it true?", "critique: [is, it]"), 4, ["principles[0].critique", "must be a string"]),
    (GOOD.replace("  - name: kind", "  - name: kind\n  bad: [unclosed"), 7, ["not valid YAML"]),
    ("- name: honest\n", 1, ["must be a mapping"]),
    (GOOD + "extra: 1\n", 12, ["unknown key 'extra'"]),
    ("principles: []\n", 1, ["principles", "at least one principle"]),
    # a field given twice: YAML would keep the second silently
    (GOOD.replace("    revision: say it kindly.\n", "    revision: say it kindly.\n    critique: again?\n"), 9,
     ["principles[1]", "'critique' given twice (first on line 7)"]),
    ("# nothing yet\n", None, ["the file is empty"]),
])
def test_malformed_constitutions_name_the_line_and_field(tmp_path, bad, line, words):
    path = _write(tmp_path, bad)
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:" if line else f"{path}:"), message
    for w in words:
        assert w in message, message


def test_prompt_messages_round_trip_through_the_chat_template(tiny_tokenizer):
    from rlhfkit.data.tokenize import render_prompt

    task_prompt = "User: what color is the dax?\nAssistant:"
    assert prompt_messages(task_prompt) == [{"role": "user", "content": "what color is the dax?"}]
    assert render_prompt(tiny_tokenizer, prompt_messages(task_prompt)) == task_prompt
    messages = [{"role": "user", "content": "hi"}]
    assert prompt_messages(messages) == messages
    assert prompt_messages("hello there") == [{"role": "user", "content": "hello there"}]


def test_records_and_pairs():
    same = CAIExample("p", "fine.", [{"principle": "kind", "critique": "ok", "revision": "fine."}])
    better = CAIExample("q", "go away.", [{"principle": "kind", "critique": "rude", "revision": "hello!"}])
    empty = CAIExample("r", "x", [{"principle": "kind", "critique": "", "revision": "  "}])
    assert sft_records([same, better, empty]) == [{"prompt": "p", "completion": " fine."},
                                                  {"prompt": "q", "completion": " hello!"}]
    assert revision_pairs([same, better, empty]) == [{"prompt": "q", "chosen": " hello!", "rejected": " go away."}]


def test_critique_and_revise_on_a_tiny_model(tiny_model_dir, tiny_tokenizer, tmp_path):
    from rlhfkit.data.tokenize import render_prompt
    from rlhfkit.models.loading import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    constitution = load_constitution(_write(tmp_path, GOOD))
    prompts = ["User: what color is the dax?\nAssistant:", [{"role": "user", "content": "where does the wug live?"}]]
    kwargs = dict(n_revisions=2, rng_seed=3, max_new_tokens=8, batch_size=4)
    first = critique_and_revise(model, tiny_tokenizer, prompts, constitution, **kwargs)
    again = critique_and_revise(model, tiny_tokenizer, prompts, constitution, **kwargs)
    assert [e.to_dict() for e in first] == [e.to_dict() for e in again]  # deterministic under the seed
    for i, example in enumerate(first):
        assert len(example.steps) == 2 and example.final == example.steps[-1]["revision"]
        drawn = [constitution.sample_principle(random.Random(f"3:{i}:{r}")).name for r in range(2)]
        assert [s["principle"] for s in example.steps] == drawn
    # the critique request follows the model's own response, as a user turn
    text = render_prompt(tiny_tokenizer, critique_turns(prompts[0], " the dax is red.", constitution.principles[0]))
    assert text == "User: what color is the dax?\nAssistant: the dax is red.<|eos|>\nUser: is it true?\nAssistant:"
    given = critique_and_revise(model, tiny_tokenizer, prompts, constitution, initial_responses=[" a", " b"], **kwargs)
    assert [e.initial for e in given] == ["a", "b"]


def test_each_round_sees_the_prompt_and_the_current_response_only(monkeypatch, tmp_path):
    # generation replaced by a recorder: the answer to any conversation is "r<number of calls>"
    import rlhfkit.rollout.sample as sample

    seen = []

    def fake_generate(model, tokenizer, conversations, *, n, seed, **kwargs):
        seen.append(conversations)
        return [[f" r{len(seen)}"] for _ in conversations]

    monkeypatch.setattr(sample, "generate_texts", fake_generate)
    constitution = load_constitution(_write(tmp_path, GOOD))
    [example] = critique_and_revise(None, None, ["User: hi\nAssistant:"], constitution, n_revisions=2, rng_seed=1)
    # calls: 1 initial, 2 critique, 3 revision (round 0), 4 critique, 5 revision (round 1)
    assert example.initial == "r1" and [s["critique"] for s in example.steps] == ["r2", "r4"]
    assert example.final == "r5" and [s["revision"] for s in example.steps] == ["r3", "r5"]
    first, second = (constitution.sample_principle(random.Random(f"1:0:{r}")) for r in range(2))
    user = {"role": "user", "content": "hi"}
    assert seen[1] == [[user, {"role": "assistant", "content": "r1"}, {"role": "user", "content": first.critique}]]
    revise = [{"role": "assistant", "content": "r2"}, {"role": "user", "content": first.revision}]
    assert seen[2] == [seen[1][0] + revise]
    # round 1 starts again from the prompt, with round 0's revision as the response
    assert seen[3] == [[user, {"role": "assistant", "content": "r3"}, {"role": "user", "content": second.critique}]]


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    (tmp_path / "cai_judges.py").write_text(
        "def shorter(prompt, a, b, criterion=None):\n    return 0.8 if len(a) < len(b) else 0.2\n\n"
        "def longer(prompt, a, b):\n    return 0.2 if len(a) < len(b) else 0.8\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cai_judges:shorter"


@pytest.mark.slow
def test_rlhfkit_constitution_end_to_end_and_resume(tiny_model_dir, tmp_path, judge_module, capsys):
    from rlhfkit.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"User: what color is the dax {i}?\nAssistant:"}) + "\n"
                               for i in range(5)))
    constitution = _write(tmp_path, GOOD)
    out = tmp_path / "run"
    args = ["constitution", f"model={tiny_model_dir}", f"prompts={prompts}", f"constitution={constitution}",
            "n_revisions=2", "max_new_tokens=6", "chunk_size=2", "judge.kind=python", f"judge.function={judge_module}",
            "--output-dir", str(out)]
    assert main(args) == 0
    steps = [json.loads(line) for line in (out / "cai_steps.jsonl").read_text().splitlines()]
    assert sorted(s["index"] for s in steps) == [0, 1, 2, 3, 4] and all(len(s["steps"]) == 2 for s in steps)
    assert len((out / "sft.jsonl").read_text().splitlines()) == sum(bool(s["final"].strip()) for s in steps)
    prefs = [json.loads(line) for line in (out / "feedback_prefs.jsonl").read_text().splitlines()]
    assert prefs and all(r["principle"] == "overall" and r["criterion"] == "which is better?" for r in prefs)
    assert all(len(r["chosen"]) <= len(r["rejected"]) and r["label_prob"] == pytest.approx(0.8) for r in prefs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 5 and summary["feedback"]["records"] == len(prefs)
    # a rerun does nothing again: no prompt is revised twice, no pair judged twice
    before = (out / "cai_steps.jsonl").read_text()
    assert main(args) == 0
    assert (out / "cai_steps.jsonl").read_text() == before
    assert json.loads((out / "summary.json").read_text())["feedback"]["records"] == len(prefs)
    # an interrupted supervised phase: two prompts missing, one torn line; only those are done again
    lines = before.splitlines()
    (out / "cai_steps.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    assert main(args) == 0
    redone = [json.loads(line) for line in (out / "cai_steps.jsonl").read_text().splitlines()]
    assert sorted(s["index"] for s in redone) == [0, 1, 2, 3, 4]
    assert redone[:3] == steps[:3]  # the complete lines are kept as they were
    # the redone prompts draw the same principles (sampled texts depend on the batch they are in)
    by_index = {s["index"]: s for s in steps}
    assert all([x["principle"] for x in s["steps"]] == [x["principle"] for x in by_index[s["index"]]["steps"]]
               for s in redone)
    # a rerun that would mix two runs' data stops, naming the file, the line and the field
    capsys.readouterr()
    assert main(args + ["n_revisions=1"]) == 1
    assert "cai_steps.jsonl:1: field 'steps': 2 rounds, but n_revisions=1" in capsys.readouterr().err
    assert main(args + ["judge.function=cai_judges:longer"]) == 1
    assert "feedback_prefs.jsonl:1: field 'judge'" in capsys.readouterr().err
    # fewer prompts: the supervised outputs keep only those (the saved steps of the others stay)
    assert main(args + ["max_prompts=3", "feedback=false"]) == 0
    assert len((out / "revision_pairs.jsonl").read_text().splitlines()) <= 3
    assert json.loads((out / "summary.json").read_text())["prompts"] == 3


def test_feedback_phase_needs_comparison_principles(tiny_model_dir, tmp_path, judge_module, capsys):
    from rlhfkit.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "User: hi\nAssistant:"}) + "\n")
    constitution = _write(tmp_path, GOOD.split("comparison_principles:")[0])
    rc = main(["constitution", f"model={tiny_model_dir}", f"prompts={prompts}", f"constitution={constitution}",
               "judge.kind=python", f"judge.function={judge_module}", "--output-dir", str(tmp_path / "run")])
    assert rc == 1 and "comparison_principles is empty" in capsys.readouterr().err


def test_a_judge_can_veto_revisions(tiny_model_dir, tiny_tokenizer, tmp_path):
    from rlhfkit.feedback.judges.base import Judge, Verdict
    from rlhfkit.models.loading import load_causal_lm

    class Fixed(Judge):
        def __init__(self, prob):
            self.prob, self.seen = prob, []

        def compare_batch(self, prompts, a, b, *, criterion=None):
            self.seen.append((list(a), list(b)))
            return [Verdict(prob_a=self.prob) for _ in a]

    model = load_causal_lm(tiny_model_dir)
    constitution = load_constitution(_write(tmp_path, GOOD))
    prompts = ["User: what color is the dax?\nAssistant:"] * 2
    kwargs = dict(n_revisions=2, rng_seed=1, max_new_tokens=6, initial_responses=[" red.", " blue."])
    vetoed = critique_and_revise(model, tiny_tokenizer, prompts, constitution, accept_judge=Fixed(0.2), **kwargs)
    assert [e.final for e in vetoed] == ["red.", "blue."]  # every revision lost: the responses stand
    assert all(s["accepted"] is False and s["revision"] == e.initial for e in vetoed for s in e.steps)
    judge = Fixed(0.9)
    kept = critique_and_revise(model, tiny_tokenizer, prompts, constitution, accept_judge=judge, **kwargs)
    assert all(s["accepted"] == bool(s["proposed"].strip()) for e in kept for s in e.steps)
    # the judge compares each revision (a) with the response it revises (b)
    assert judge.seen[0][1] == ["red.", "blue."] and judge.seen[0][0] == [e.steps[0]["proposed"] for e in kept]
