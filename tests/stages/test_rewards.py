"""Reward sources behind one interface: Python functions, weighted sums, HTTP, reward-model ensembles."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.train.rl.reward_sources import (HTTPRewardSource, PythonRewardSource, RewardModelSource, RewardSettings,
                                             WeightedSum, build_reward_source, load_function)

PROMPTS = ["User: what color is the dax?\nAssistant:"] * 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
RESPONSES = [" the dax is red.", " red red", " blue"]


def count_red(prompts, responses):
    return [r.count("red") for r in responses]


def test_python_source_from_string_and_callable(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def length(prompts, responses):\n"
                                            "    return [len(r) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    source = PythonRewardSource("my_rewards:length")
    assert source.name == "length"
    # len(" the dax is red.") = 16, len(" red red") = 8, len(" blue") = 5
    assert source.score(PROMPTS, RESPONSES).tolist() == [16.0, 8.0, 5.0]
    assert PythonRewardSource(count_red).score(PROMPTS, RESPONSES).tolist() == [1.0, 2.0, 0.0]
    with pytest.raises(ConfigError, match="package.module:function"):
        load_function("my_rewards.length")
    with pytest.raises(ConfigError, match="has no attribute"):
        load_function("my_rewards:nothing")
    with pytest.raises(ValueError, match="returned 1 values for 3"):
        PythonRewardSource(lambda p, r: [0.0]).score(PROMPTS, RESPONSES)


def test_weighted_sum_by_hand():
    # 2·count_red − 0.5·len(words): [2·1 − 0.5·4, 2·2 − 0.5·2, 2·0 − 0.5·1] = [0, 3, −0.5]
    words = PythonRewardSource(lambda p, r: [len(x.split()) for x in r], name="words")
    total = WeightedSum([PythonRewardSource(count_red), words], [2.0, -0.5])
    assert total.score(PROMPTS, RESPONSES).tolist() == [0.0, 3.0, -0.5]
    assert total.last_stats == {"reward/count_red": 1.0, "reward/words": pytest.approx(7 / 3)}
    with pytest.raises(ValueError, match="2 reward weights for 1"):
        WeightedSum([words], [1.0, 2.0])


class _Handler(BaseHTTPRequestHandler):
    calls = 0
    fail_first = 0

    def do_POST(self):  # noqa: N802 (http.server API)
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).calls <= type(self).fail_first:
            self.send_response(503)
            self.end_headers()
            return
        if body["prompts"] == ["bad"]:
            self.send_response(400)
            self.end_headers()
            return
        answer = json.dumps({"rewards": [float(len(r)) for r in body["responses"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.calls, _Handler.fail_first = 0, 0
    yield f"http://127.0.0.1:{httpd.server_address[1]}/score"
    httpd.shutdown()
    httpd.server_close()


def test_http_source_batches_retries_and_fails_clearly(server):
    source = HTTPRewardSource(server, batch_size=2, backoff=0.01)
    assert source.score(PROMPTS, RESPONSES).tolist() == [16.0, 8.0, 5.0]
    assert _Handler.calls == 2  # 3 pairs in batches of 2
    _Handler.calls, _Handler.fail_first = 0, 1  # one 503, then success
    assert source.score(PROMPTS[:1], RESPONSES[:1]).tolist() == [16.0]
    assert _Handler.calls == 2
    with pytest.raises(RuntimeError, match="HTTP 400"):
        source.score(["bad"], ["x"])
    _Handler.calls, _Handler.fail_first = 0, 99
    with pytest.raises(RuntimeError, match="failed after 3 attempts"):
        HTTPRewardSource(server, retries=2, backoff=0.01).score(PROMPTS[:1], RESPONSES[:1])


def test_ensemble_source_is_mean_minus_lambda_std(tiny_model_dir, tmp_path):
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_model import load_reward_model

    tokenizer = load_tokenizer(tiny_model_dir)
    for k in range(2):
        torch.manual_seed(k)  # a different random score head per member
        member = load_reward_model(tiny_model_dir)
        member.save_pretrained(tmp_path / "rm" / f"member-{k}")
        tokenizer.save_pretrained(tmp_path / "rm" / f"member-{k}")
    (tmp_path / "rm" / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-1"]}))
    source = RewardModelSource(tmp_path / "rm", std_coef=0.5)
    members = source.scorer.member_scores(PROMPTS, RESPONSES)  # (2, 3)
    # population std of two numbers a, b is |a − b| / 2
    expected = members.mean(0) - 0.5 * (members[0] - members[1]).abs() / 2
    assert torch.allclose(source.score(PROMPTS, RESPONSES), expected, atol=1e-6)
    assert source.last_stats["reward/ensemble_std"] > 0


def test_calibrated_source_divides_by_the_stored_temperature(tiny_model_dir, tmp_path):
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_model import load_reward_model, write_temperature

    load_reward_model(tiny_model_dir).save_pretrained(tmp_path / "rm")
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path / "rm")
    raw = RewardModelSource(tmp_path / "rm").score(PROMPTS, RESPONSES)
    # no temperature stored: T = 1, calibration changes nothing
    assert torch.equal(RewardModelSource(tmp_path / "rm", calibrated=True).score(PROMPTS, RESPONSES), raw)
    write_temperature(tmp_path / "rm", 2.5)
    calibrated = build_reward_source(RewardSettings(model=str(tmp_path / "rm"), calibrated=True))
    assert torch.allclose(calibrated.score(PROMPTS, RESPONSES), raw / 2.5, atol=1e-6)
    # the raw score is what PPO gets unless calibration is asked for
    assert torch.equal(RewardModelSource(tmp_path / "rm").score(PROMPTS, RESPONSES), raw)


def test_settings_build_and_validate(tmp_path, monkeypatch):
    (tmp_path / "r2.py").write_text("def one(p, r):\n    return [1.0] * len(r)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = RewardSettings(functions=["r2:one"], weights=[3.0, 1.0])
    total = build_reward_source(settings, extra=[count_red])
    assert total.score(PROMPTS, RESPONSES).tolist() == [4.0, 5.0, 3.0]  # 3·1 + count_red
    single = build_reward_source(RewardSettings(functions=["r2:one"]))
    assert isinstance(single, PythonRewardSource)
    with pytest.raises(ConfigError, match="at least one reward source"):
        RewardSettings().validate()
    with pytest.raises(ConfigError, match="reward.weights has 1 entries but there are 2"):
        RewardSettings(functions=["r2:one", "r2:one"], weights=[1.0]).validate()
    # dotted CLI overrides reach the nested list fields
    from rlhfkit.train.rl.ppo import PPOConfig

    config = load_config(PPOConfig, None, ["model=m", "prompts=p.jsonl", "reward.functions=r2:one,r2:one",
                                           "reward.weights=[1, 0.5]", "value_model=head"])
    assert config.reward.functions == ["r2:one", "r2:one"] and config.reward.weights == [1.0, 0.5]
