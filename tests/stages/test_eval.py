"""``rlhfkit eval`` end to end on tiny models made here: a demo-like folder (the facts task from a
seed, a tiny SFT baseline), two policies, judged by gold, a reward model and a Python "LLM" judge;
eval.json's keys, win rates recomputed from the cached samples, and reruns that reuse the cache."""

import json
import sys

import pytest
import torch

from rlhfkit.evaluate import metrics as M
from rlhfkit.evaluate import policy_samples
from rlhfkit.evaluate.policy_eval import EvalConfig, run_eval
from rlhfkit.feedback.judges.config import JudgeConfig
from rlhfkit.models.tiny import TinyModelSpec, create_tiny_model
from rlhfkit.tasks import FactsTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POLICY_KEYS = {"path", "is_baseline", "win_rate", "win_rate_ci", "comparisons", "lc_win_rate", "lc_win_rate_ci",
               "lc_theta", "lc_phi", "gold_reward", "gold_reward_ci", "reward_score", "reward_score_ci",
               "kl_to_reference", "kl_to_reference_ci", "mean_length", "mean_length_ci", "distinct_1",
               "distinct_2", "self_bleu", "entropy", "sycophancy_rate", "contrarian_rate", "n_false_probes",
               "n_true_probes"}


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A demo-like run folder: task.json, eval prompts, a tiny base model, an SFT baseline trained
    for a few steps on the task's demonstrations, a second policy (another init) and a reward model."""
    from rlhfkit.models.reward_model import load_reward_model
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.train.sft import OptimConfig, SFTConfig, run_sft

    root = tmp_path_factory.mktemp("demo")
    task = FactsTask.from_seed(0)
    (root / "task.json").write_text(json.dumps(task.to_dict()))
    spec = TinyModelSpec(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    corpus = task.pretrain_corpus(200)
    base = create_tiny_model(corpus, root / "base", spec=spec, seed=0)
    other = create_tiny_model(corpus, root / "other", spec=spec, seed=1)
    sft_data = root / "sft.jsonl"
    sft_data.write_text("".join(json.dumps(r) + "\n" for r in task.sft_records(64)))
    sft = run_sft(SFTConfig(model=str(base), data=str(sft_data), output_dir=str(root / "sft"), batch_size=8,
                            max_length=128, max_steps=8, optim=OptimConfig(learning_rate=1e-2, warmup_ratio=0.0),
                            eval_fraction=0.0, save_every=0, eval_every=0, progress=False, seed=0))
    torch.manual_seed(0)
    rm = load_reward_model(base)  # a fresh score head on the base model: an untrained but fixed reward model
    rm.save_pretrained(root / "rm")
    load_tokenizer(base).save_pretrained(root / "rm")
    prompts = root / "prompts.jsonl"
    records = task.prompts(6, rng_seed=1, split="eval")
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records))
    return {"root": root, "task": task, "base": str(base), "other": str(other), "sft": str(sft),
            "rm": str(root / "rm"), "prompts": str(prompts)}


def config(d, out, **kw):
    base = dict(policies=[d["base"], d["other"]], labels=["base", "other"], baseline=d["sft"], baseline_label="sft",
                prompts=d["prompts"], output_dir=str(out), n_samples=2, max_new_tokens=12, task=str(d["root"]),
                reward_model=d["rm"], judge=JudgeConfig(kind="gold"), lc_resamples=10)
    base.update(kw)
    return EvalConfig(**base)


def cached(out, label):
    return json.loads((out / "samples" / f"{label}.json").read_text())


def test_gold_and_reward_judges_and_the_sample_cache(demo_like, tmp_path, monkeypatch, capsys):
    d, out = demo_like, tmp_path / "eval"
    result = json.loads(run_eval(config(d, out)).read_text())
    assert "rlhfkit eval: 6 prompts x 2 samples, judge gold, against sft" in capsys.readouterr().out
    assert set(result["policies"]) == {"base", "other", "sft"}
    assert {"version", "prompts", "sampling", "judge", "baseline", "reference", "intervals", "length_control",
            "policies"} <= set(result)
    for label, entry in result["policies"].items():
        assert set(entry) == POLICY_KEYS, label
        assert entry["is_baseline"] == (label == "sft")
        for key in ("gold_reward", "reward_score", "kl_to_reference", "mean_length", "distinct_1", "entropy"):
            assert entry[key] is not None, (label, key)
    assert result["policies"]["sft"]["win_rate"] is None
    assert result["policies"]["sft"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)  # the reference itself
    # the win rate by gold, recomputed from the cached samples: n² = 4 comparisons on each of 6 prompts
    task = d["task"]
    gold = {label: [[task.gold(p, r) for r in rs] for p, rs in zip(cached(out, label)["prompts"],
                                                                    cached(out, label)["responses"])]
            for label in ("base", "other", "sft")}
    for label in ("base", "other"):
        want = M.win_rate_by_prompt(gold[label], gold["sft"], n_resamples=2000, seed=0)
        entry = result["policies"][label]
        assert entry["win_rate"] == pytest.approx(want["win_rate"])
        assert entry["win_rate_ci"] == pytest.approx([want["ci_low"], want["ci_high"]])
        assert entry["comparisons"] == 6 * 2 * 2
        assert 0.0 <= entry["lc_win_rate"] <= 1.0
        assert entry["lc_win_rate_ci"][0] <= entry["lc_win_rate_ci"][1]

    # a rerun samples nothing: the sampler fails if called, and eval.json comes out the same
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(policy_samples, "generate_texts", no_sampling)
    assert json.loads(run_eval(config(d, out)).read_text()) == result

    # the reward judge on the same samples: the win rate from the reward model's scores
    rm_result = json.loads(run_eval(config(d, out, judge=JudgeConfig(kind="reward", model=d["rm"]))).read_text())
    from rlhfkit.models.reward_model import load_scorer

    scorer = load_scorer(d["rm"])
    scores = {}
    for label in ("base", "sft"):
        c = cached(out, label)
        flat = [float(s) for s in scorer.score([p for p in c["prompts"] for _ in range(2)],
                                               [r for rs in c["responses"] for r in rs])]
        scores[label] = [flat[i:i + 2] for i in range(0, len(flat), 2)]
    want = M.win_rate_by_prompt(scores["base"], scores["sft"], n_resamples=2000, seed=0)
    assert rm_result["policies"]["base"]["win_rate"] == pytest.approx(want["win_rate"])
    assert rm_result["judge"]["kind"] == "reward"

    # a changed sampling setting samples again (here: the sampler is called, and fails)
    with pytest.raises(AssertionError, match="sampled again"):
        run_eval(config(d, out, max_new_tokens=13))


def prefer_longer(prompt, a, b):
    """A stand-in LLM judge: P(a better) = 0.9 when a has more words, 0.1 when fewer, 0.5 on a tie."""
    prefer_longer.calls += 1
    la, lb = len(a.split()), len(b.split())
    return 0.9 if la > lb else 0.1 if la < lb else 0.5


prefer_longer.calls = 0


def test_verdict_judge_goes_through_the_judge_layer_and_its_journal(demo_like, tmp_path, monkeypatch):
    d, out = demo_like, tmp_path / "eval"
    monkeypatch.setitem(sys.modules, "eval_test_judges", sys.modules[__name__])
    judge = JudgeConfig(kind="python", function="eval_test_judges:prefer_longer")
    cfg = config(d, out, judge=judge, policies=[d["base"]], labels=["base"], reward_model=None)
    result = json.loads(run_eval(cfg).read_text())
    base, sft = cached(out, "base"), cached(out, "sft")
    # sample k against baseline sample k; a longer response wins, a shorter loses, equal length ties
    per_prompt = []
    for mine, theirs in zip(base["responses"], sft["responses"]):
        outcomes = []
        for a, b in zip(mine, theirs):
            la, lb = len(a.split()), len(b.split())
            outcomes.append(1.0 if la > lb else 0.0 if la < lb else 0.5)
        per_prompt.append(sum(outcomes) / len(outcomes))
    entry = result["policies"]["base"]
    assert entry["comparisons"] == 6 * 2
    assert entry["win_rate"] == pytest.approx(sum(per_prompt) / len(per_prompt))
    assert entry["reward_score"] is None
    journals = list((out / "judgments").glob("base-*.jsonl"))
    assert len(journals) == 1
    calls = prefer_longer.calls
    assert calls > 0
    run_eval(cfg)  # the verdicts are in the journal: the judge is not asked again
    assert prefer_longer.calls == calls


def test_bad_input_is_a_clear_error(demo_like, tmp_path):
    from rlhfkit.config import ConfigError
    from rlhfkit.data.records import DataError

    d = demo_like
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "User: hi\nAssistant:"}) + "\n" + json.dumps({"promt": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'prompt'"):
        run_eval(config(d, tmp_path / "o", prompts=str(bad)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="chat.jsonl: field 'prompt': the built-in task"):
        run_eval(config(d, tmp_path / "o", prompts=str(chat)))
    with pytest.raises(ConfigError, match="needs task"):
        run_eval(config(d, tmp_path / "o", task=None))
    with pytest.raises(ConfigError, match="labels must differ"):
        run_eval(config(d, tmp_path / "o", labels=["a", "a"]))
