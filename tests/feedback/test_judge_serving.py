"""The HTTP judge against a real server: ``rlhfkit serve`` started by the test on loopback.

The served model is the tiny test Llama taught for a few steps to answer "A" or "B" (so both answers
sit in its top-20 log-probs and the HTTP judge reads soft labels, not the text fallback). The HTTP
judge must then give the very probabilities the local judge reads from the same model's logits.
"""

from __future__ import annotations

import json

import pytest

from rlhfkit.feedback.judges import HTTPJudge, JudgeTemplate, LocalLMJudge

pytestmark = pytest.mark.slow

TEMPLATE = JudgeTemplate(text="{question} a: {a} b: {b}", choices=("A", "B"))
PROMPTS = ["User: what color is the dax?\nAssistant:", "User: where does the wug live?\nAssistant:",
           "User: i think the zorp is blue. am i right?\nAssistant:"]
A = [" the dax is red.", " the wug lives in the cave.", " no, the zorp is green."]
B = [" the dax is blue.", " in the sea.", " yes."]


@pytest.fixture(scope="module")
def judge_model(tiny_model_dir, tmp_path_factory):
    """The tiny Llama after 60 SFT steps on judge prompts answered "A" (shorter first) or "B"."""
    from rlhfkit.data.records import write_jsonl
    from rlhfkit.train.sft import OptimConfig, SFTConfig, run_sft

    out = tmp_path_factory.mktemp("judge")
    records = []
    for i in range(64):
        p, a, b = PROMPTS[i % 3], A[i % 3], B[(i + 1) % 3]
        a, b = (a, b) if i % 2 else (b, a)
        records.append({"prompt": [{"role": "user", "content": TEMPLATE.render(p, a, b, "")}],
                        "completion": "A" if len(a) < len(b) else "B"})
    write_jsonl(records, out / "data.jsonl")
    run_sft(SFTConfig(model=str(tiny_model_dir), data=str(out / "data.jsonl"), output_dir=str(out / "run"),
                      max_steps=60, batch_size=16, max_length=128, optim=OptimConfig(learning_rate=1e-2),
                      log_every=100, eval_every=0, save_every=0, seed=0))
    return out / "run" / "final"


@pytest.fixture(scope="module")
def server(judge_model):
    from rlhfkit.serve.testing import running_model_server

    with running_model_server(judge_model, served_name="tiny-judge") as base_url:
        yield base_url


def test_http_judge_matches_the_local_judge_through_rlhfkit_serve(judge_model, server, tmp_path):
    # the server runs fp32 weights (rlhfkit serve's default), so the local judge compares in fp32 too
    local = LocalLMJudge(judge_model, template=TEMPLATE, precision="fp32").compare_batch(PROMPTS, A, B)
    cache = tmp_path / "cache.sqlite"
    http = HTTPJudge(server + "/v1", "tiny-judge", template=TEMPLATE, cache=cache, concurrency=3)
    remote = http.compare_batch(PROMPTS, A, B)
    assert http.stats["requests"] == 6 and http.stats["parse_fallbacks"] == 0  # both orders, soft labels
    for mine, theirs in zip(local, remote):
        assert theirs.prob_a_first == pytest.approx(mine.prob_a_first, abs=1e-4)
        assert theirs.prob_a_second == pytest.approx(mine.prob_a_second, abs=1e-4)
        assert theirs.prob_a == pytest.approx(mine.prob_a, abs=1e-4)
    # a restarted judge with the same cache asks the server nothing
    again = HTTPJudge(server + "/v1", "tiny-judge", template=TEMPLATE, cache=cache)
    assert [v.prob_a for v in again.compare_batch(PROMPTS, A, B)] == [v.prob_a for v in remote]
    assert again.stats["requests"] == 0 and again.stats["cache_hits"] == 6


def test_rlhfkit_judge_over_http_is_resumable(server, tmp_path):
    from rlhfkit.cli import main

    data = tmp_path / "candidates.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "responses": [a, b]}) + "\n" for p, a, b in zip(PROMPTS, A, B)))
    template = tmp_path / "template.txt"
    template.write_text(TEMPLATE.text)
    args = ["judge", f"data={data}", "judge.kind=http", f"judge.url={server}/v1", "judge.model=tiny-judge",
            f"judge.template={template}", f"judge.cache={tmp_path / 'cache.sqlite'}", "--output-dir", str(tmp_path / "run")]
    assert main(args) == 0
    prefs = [json.loads(line) for line in (tmp_path / "run" / "prefs.jsonl").read_text().splitlines()]
    assert len(prefs) == 3 and all(r["judge"] == "http:tiny-judge" and r["label_prob"] >= 0.5 for r in prefs)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["judge_stats"]["requests"] == 6 and summary["mean_position_bias"] is not None
    assert main(args) == 0  # a rerun: nothing left to judge, nothing requested
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["new"] == 0 and summary["judge_stats"]["requests"] == 0
