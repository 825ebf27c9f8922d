"""rlhfkit serve, a real server on loopback: OpenAI chat completions (greedy = local generate,
logprobs = a local forward's log_softmax), stop strings, 400s that name the field, /score = the
local scorer, HTTPRewardSource and PPO's remote reward against it, the API key, the CLI."""

import json

import httpx
import pytest
import torch

from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.reward_model import BIAS_KEY, load_reward_model, load_scorer
from rlhfkit.train.rl.reward_sources import HTTPRewardSource, RewardModelSource, RewardSettings
from rlhfkit.serve import running_model_server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MESSAGES = [{"role": "user", "content": "what color is the dax?"}]
PROMPTS = ["User: what color is the dax?\nAssistant:", [{"role": "user", "content": "where does the wug live?"}]]
RESPONSES = [" the dax is red.", " the wug lives in the cave."]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reward_dirs(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    """A single reward model (with a normalisation bias in config.json) and a 2-member ensemble."""
    root = tmp_path_factory.mktemp("rm")
    for k, name in enumerate(["single", "ensemble/member-0", "ensemble/member-1"]):
        torch.manual_seed(k)  # a different random score head each
        model = load_reward_model(tiny_model_dir)
        setattr(model.config, BIAS_KEY, 0.25)
        model.save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
    (root / "ensemble" / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-1"]}))
    return root / "single", root / "ensemble"


@pytest.fixture(scope="module")
def server(tiny_model_dir, reward_dirs):
    with running_model_server([tiny_model_dir, reward_dirs[1]], served_name="tiny") as base_url:
        yield base_url


def chat(server, **body):
    body = {"model": "tiny", "messages": MESSAGES, **body}
    return httpx.post(server + "/v1/chat/completions", json=body, timeout=30)


def local_greedy(tiny_model_dir, tokenizer, n_tokens):
    """Prompt ids and greedy response ids from transformers' own generate (KV cache)."""
    model = load_causal_lm(tiny_model_dir).eval()
    prompt = encode_prompt(tokenizer, MESSAGES)
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=n_tokens, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
    response = out[0, len(prompt):].tolist()
    if tokenizer.eos_token_id in response:
        response = response[: response.index(tokenizer.eos_token_id)]
    return model, prompt, response


def test_health_and_model_list(server):
    assert httpx.get(server + "/health").json() == {"status": "ok", "chat": "tiny", "reward": "ensemble"}
    listing = httpx.get(server + "/v1/models").json()
    assert listing["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in listing["data"]] == [
        ("tiny", "model", "rlhfkit"), ("ensemble", "model", "rlhfkit")]


def test_greedy_completion_is_deterministic_and_equals_local_generate(server, tiny_model_dir, tiny_tokenizer):
    answer = chat(server, temperature=0, max_tokens=12)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and choice["logprobs"] is None
    _, prompt, response = local_greedy(tiny_model_dir, tiny_tokenizer, 12)
    assert choice["message"]["content"] == tiny_tokenizer.decode(response, skip_special_tokens=True)
    # 12 tokens with no EOS stops at the length; an EOS among them (counted) stops early
    assert choice["finish_reason"] == ("length" if len(response) == 12 else "stop")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(prompt) and usage["completion_tokens"] == min(len(response) + 1, 12)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    again = chat(server, temperature=0, max_tokens=12).json()
    assert again["choices"][0]["message"] == choice["message"]


def test_logprobs_are_the_models_own_log_softmax(server, tiny_model_dir, tiny_tokenizer):
    body = chat(server, temperature=0, max_tokens=8, logprobs=True, top_logprobs=5).json()
    content = body["choices"][0]["logprobs"]["content"]
    model, prompt, response = local_greedy(tiny_model_dir, tiny_tokenizer, 8)
    assert [c["token"] for c in content] == [tiny_tokenizer.decode([t]) for t in response]
    assert "".join(c["token"] for c in content) == body["choices"][0]["message"]["content"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()  # (P + R, V)
    # the logits at position P - 1 + t predict response token t
    expected = torch.log_softmax(logits, -1)[torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response)),
                                             torch.tensor(response)]
    assert torch.allclose(torch.tensor([c["logprob"] for c in content]), expected, atol=1e-4)
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == 5 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["token"] == entry["token"] and top[0]["logprob"] == pytest.approx(entry["logprob"])
    assert b"".join(bytes(c["bytes"]) for c in content).decode() == body["choices"][0]["message"]["content"]


def test_token_bytes_rebuild_characters_split_across_tokens(tiny_tokenizer):
    from rlhfkit.serve.generate import token_bytes

    ids = tiny_tokenizer("é漢 dax", add_special_tokens=False)["input_ids"]  # the tokenizer saw ASCII only
    assert "\ufffd" in tiny_tokenizer.decode(ids[:1])  # the first token is half of "é"
    assert b"".join(bytes(token_bytes(tiny_tokenizer, t)) for t in ids) == "é漢 dax".encode()


def test_n_choices_with_a_seed_are_reproducible(server):
    first = chat(server, n=2, seed=7, temperature=1.0, top_p=0.9, max_tokens=6).json()
    assert [c["index"] for c in first["choices"]] == [0, 1]
    second = chat(server, n=2, seed=7, temperature=1.0, top_p=0.9, max_tokens=6).json()
    assert [c["message"] for c in first["choices"]] == [c["message"] for c in second["choices"]]


def test_stop_strings_cut_the_text(server):
    full = chat(server, temperature=0, max_tokens=16).json()["choices"][0]["message"]["content"]
    stop = full[4:6]
    for given in (stop, ["zzzz", stop]):
        choice = chat(server, temperature=0, max_tokens=16, stop=given).json()["choices"][0]
        assert choice["message"]["content"] == full[: full.index(stop)]
        assert choice["finish_reason"] == "stop"


@pytest.mark.parametrize("body, param", [
    ({"messages": None}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": "8"}, "max_completion_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"stop": [1]}, "stop"),
    ({"seed": -1}, "seed"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "the dax " * 200}]}, "messages"),  # longer than the context
])
def test_bad_chat_requests_are_400s_that_name_the_field(server, body, param):
    answer = chat(server, **body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_missing_messages_wrong_model_and_bad_json(server):
    answer = httpx.post(server + "/v1/chat/completions", json={"model": "tiny"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "messages"
    answer = chat(server, model="gpt-4o")
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "model"
    assert "'tiny'" in answer.json()["error"]["message"]
    answer = httpx.post(server + "/score", content=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]["message"]


def test_score_equals_the_local_scorer(server, reward_dirs):
    answer = httpx.post(server + "/score", json={"prompts": PROMPTS, "responses": RESPONSES})
    assert answer.status_code == 200, answer.text
    local = load_scorer(reward_dirs[1]).score(PROMPTS, RESPONSES)
    assert torch.allclose(torch.tensor(answer.json()["rewards"]), local, atol=1e-5)
    penalised = httpx.post(server + "/score", json={"prompts": PROMPTS, "responses": RESPONSES,
                                                    "ensemble_std_coef": 0.5}).json()["rewards"]
    expected = RewardModelSource(reward_dirs[1], std_coef=0.5).score(PROMPTS, RESPONSES)
    assert torch.allclose(torch.tensor(penalised), expected, atol=1e-5)
    source = HTTPRewardSource(server + "/score", batch_size=1)  # two requests
    assert torch.allclose(source.score(PROMPTS, RESPONSES), local, atol=1e-5)


@pytest.mark.parametrize("body, param", [
    ({"responses": RESPONSES}, "prompts"),
    ({"prompts": PROMPTS}, "responses"),
    ({"prompts": PROMPTS, "responses": RESPONSES[:1]}, "responses"),
    ({"prompts": PROMPTS, "responses": [" a", 2]}, "responses[1]"),
    ({"prompts": [[{"role": "robot", "content": "x"}]], "responses": ["a"]}, "prompts[0][0].role"),
])
def test_bad_score_requests_are_400s_that_name_the_field(server, body, param):
    answer = httpx.post(server + "/score", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_api_key_and_a_reward_only_server(reward_dirs):
    with running_model_server(reward_dirs[0], api_key="s3cret") as url:
        assert httpx.get(url + "/health").json() == {"status": "ok", "chat": None, "reward": "single"}
        body = {"prompts": PROMPTS, "responses": RESPONSES}
        refused = httpx.post(url + "/score", json=body)
        assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["error"]["message"]
        assert httpx.post(url + "/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        rewards = HTTPRewardSource(url + "/score", headers=auth).score(PROMPTS, RESPONSES)
        local = load_scorer(reward_dirs[0]).score(PROMPTS, RESPONSES)  # the 0.25 bias included
        assert torch.allclose(rewards, local, atol=1e-5)
        no_chat = httpx.post(url + "/v1/chat/completions", json={"messages": MESSAGES}, headers=auth)
        assert no_chat.status_code == 404 and "no chat model" in no_chat.json()["error"]["message"]


def test_max_context_lets_a_long_prompt_through_a_rotary_model(tiny_model_dir, tiny_tokenizer):
    from rlhfkit.serve.generate import ChatModel
    from rlhfkit.serve.schema import RequestError, parse_chat_request

    request = parse_chat_request({"messages": [{"role": "user", "content": "the dax " * 100}], "max_tokens": 400,
                                  "temperature": 0}, max_tokens_limit=1024)
    n_prompt = len(encode_prompt(tiny_tokenizer, request.messages))
    assert n_prompt > 128
    model = load_causal_lm(tiny_model_dir)
    with pytest.raises(RequestError, match=f"the prompt is {n_prompt} tokens but the model's context is 128"):
        ChatModel(model, tiny_tokenizer, "tiny").complete(request)
    # 10 positions left for the answer: max_tokens=400 is cut to 10 and the choice ends for length
    _, (choice,) = ChatModel(model, tiny_tokenizer, "tiny", max_context=n_prompt + 10).complete(request)
    assert choice.n_tokens == 10 and choice.finish_reason == "length"


def test_a_failing_model_is_a_500_with_an_openai_error_not_a_traceback():
    from starlette.testclient import TestClient

    from rlhfkit.serve.server import Backends, create_app

    class Broken:
        name = "broken"

        def complete(self, request):
            raise RuntimeError("out of memory")

    client = TestClient(create_app(Backends(chat=Broken())), raise_server_exceptions=False)
    answer = client.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert answer.status_code == 500
    assert answer.json()["error"] == {"message": "internal error: RuntimeError: out of memory", "type": "server_error",
                                      "param": None, "code": None}


@pytest.mark.slow
def test_ppo_runs_against_the_served_reward_model(server, tiny_model_dir, tmp_path):
    from rlhfkit.rollout.base import SamplingConfig
    from rlhfkit.train.rl.ppo import PPOConfig, run_ppo
    from rlhfkit.train.optim import OptimConfig

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 4))
    config = PPOConfig(model=str(tiny_model_dir), prompts=str(prompts), output_dir=str(tmp_path / "ppo"),
                       value_model="head", reward=RewardSettings(url=server + "/score"),
                       sampling=SamplingConfig(max_new_tokens=6, batch_size=8), batch_size=8, num_minibatches=2,
                       num_ppo_epochs=1, total_steps=2, progress=False, save_every=0,
                       optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.0, min_lr_ratio=1.0), seed=0)
    run_ppo(config)
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2 and all(abs(r["objective/scores"]) < 100 for r in rows)


def test_cli_help_and_clear_errors(capsys, monkeypatch, tiny_model_dir):
    from rlhfkit.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["serve", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--reward-model", "--served-name", "--precision", "--max-new-tokens-limit", "--api-key-env"):
        assert flag in out
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert main(["serve", "--model", str(tiny_model_dir), "--api-key-env", "NO_SUCH_KEY_VAR"]) == 2
    assert "NO_SUCH_KEY_VAR" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_model_dir / "missing")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_model_dir), "--reward-model", str(tiny_model_dir)]) == 2
    assert "not a reward model folder" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)  # as if not installed
    assert main(["serve", "--model", str(tiny_model_dir)]) == 2
    assert "pip install 'rlhfkit[app]'" in capsys.readouterr().err
