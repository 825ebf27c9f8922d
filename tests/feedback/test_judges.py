"""AI judges: verdicts from logits and log-probs by hand, position debiasing, a local LM, an
OpenAI-compatible server (retries, errors, cache, API key, concurrency), reward models, functions."""

import json
import logging
import math
import os
import socket
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.feedback.judges import (BothOrdersJudge, HTTPJudge, Judge, JudgeConfig, JudgeTemplate, LocalLMJudge,
                                     PythonJudge, RewardModelJudge, Verdict, average_orders, build_judge,
                                     position_bias, two_choice_probability)
from rlhfkit.feedback.judges.http import choice_probability, parse_choice


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- pure arithmetic


def test_two_choice_probability_by_hand():
    # logits 2.0 and 0.5: σ(2.0 − 0.5) = 1 / (1 + e^-1.5) = 1 / 1.223130 = 0.817574
    assert two_choice_probability(2.0, 0.5) == pytest.approx(0.8175745, abs=1e-7)
    assert two_choice_probability(0.5, 2.0) == pytest.approx(1 - 0.8175745, abs=1e-7)
    assert two_choice_probability(3.0, 3.0) == 0.5
    assert two_choice_probability(1000.0, 0.0) == 1.0 and two_choice_probability(0.0, 1000.0) == 0.0  # no overflow


def test_average_orders_and_position_bias_by_hand():
    # a judge that says "first wins" with 0.9 in both orders: P(a | a first) = 0.9, P(a | a second) = 0.1
    assert average_orders(0.9, 0.1) == pytest.approx(0.5)
    assert position_bias(0.9, 0.1) == pytest.approx(0.4)  # 0.5·(0.9 + 0.9) − 0.5
    assert Verdict(0.5, 0.9, 0.1).position_bias == pytest.approx(0.4)
    assert position_bias(0.7, 0.7) == pytest.approx(0.0)  # consistent judge: no bias
    assert Verdict(0.7).position_bias is None


def test_http_log_prob_reading_by_hand():
    # p_A = e^-0.2 + e^-2.0 ("A" and " A") = 0.818731 + 0.135335 = 0.954066 ; p_B = e^-1.5 = 0.223130
    # P(A) = 0.954066 / (0.954066 + 0.223130) = 0.810456
    top = [{"token": "A", "logprob": -0.2}, {"token": " A", "logprob": -2.0}, {"token": "B", "logprob": -1.5},
           {"token": "C", "logprob": -3.0}]
    assert choice_probability(top, ("A", "B")) == pytest.approx(0.8104563, abs=1e-7)
    # B absent from the top list: it gets the smallest listed probability, e^-2.0 → σ(−0.1 + 2.0) = σ(1.9)
    assert choice_probability([{"token": "A", "logprob": -0.1}, {"token": "C", "logprob": -2.0}],
                              ("A", "B")) == pytest.approx(sigmoid(1.9))  # 0.869892
    assert choice_probability([{"token": "C", "logprob": -0.1}], ("A", "B")) is None
    assert parse_choice("B. Response B is kinder.", ("A", "B")) == 0.0
    assert parse_choice("Answer: A", (" A", " B")) == 1.0
    assert parse_choice("BA or AB", ("A", "B")) is None  # letters inside words do not count
    assert parse_choice("A is rude, so: B", ("A", "B"), last=True) == 0.0


# ---------------------------------------------------------------- position bias cancels


class BiasedJudge(BothOrdersJudge):
    """P(first shown wins) = σ(q_first − q_second + 2.0): true quality margin plus a pull towards A."""

    def __init__(self, quality, both_orders=True):
        self.quality, self.both_orders = quality, both_orders

    def judge_shown(self, prompts, first, second, *, criterion, comparison):
        return [(sigmoid(self.quality[x] - self.quality[y] + 2.0), None) for x, y in zip(first, second)]


def test_both_orders_cancel_a_judge_biased_towards_a():
    judge = BiasedJudge({"good": 1.0, "bad": 0.0})
    v_ab, v_ba = judge.compare_batch(["p", "p"], ["good", "bad"], ["bad", "good"])
    # order (good, bad): σ(1 + 2) = 0.952574 ; order (bad, good): P(good) = 1 − σ(−1 + 2) = 1 − 0.731059
    assert v_ab.prob_a_first == pytest.approx(sigmoid(3.0))
    assert v_ab.prob_a_second == pytest.approx(1 - sigmoid(1.0))
    # prob_a = 0.5·(0.952574 + 0.268941) = 0.610758: still prefers the better response
    assert v_ab.prob_a == pytest.approx(0.6107578, abs=1e-7)
    # the biased single order says "bad" wins when shown first: σ(−1 + 2) = 0.731 > 0.5
    assert v_ba.prob_a_first == pytest.approx(sigmoid(1.0)) and v_ba.prob_a_first > 0.5
    # the averaged verdict is symmetric under swapping a and b
    assert v_ab.prob_a + v_ba.prob_a == pytest.approx(1.0)
    # bias = 0.5·(σ(3) + σ(1)) − 0.5 = 0.5·(0.952574 + 0.731059) − 0.5 = 0.341816
    assert v_ab.position_bias == pytest.approx(0.3418164, abs=1e-7) == pytest.approx(v_ba.position_bias)
    single = BiasedJudge({"good": 1.0, "bad": 0.0}, both_orders=False).compare_batch(["p"], ["bad"], ["good"])[0]
    assert single.prob_a == single.prob_a_first == pytest.approx(sigmoid(1.0)) and single.prob_a_second is None


def test_rank_by_soft_wins():
    class Margin(Judge):
        def compare_batch(self, prompts, a, b, *, criterion=None):
            return [Verdict(sigmoid(len(x) - len(y))) for x, y in zip(a, b)]

    assert Margin().rank("p", ["aa", "a", "aaaa", "aaa"]) == [2, 3, 0, 1]
    assert Margin().rank("p", ["only"]) == [0]


# ---------------------------------------------------------------- local LM judge: a stub with known logits


class CharTokenizer:
    """One token per character (id = code point); no chat template, no BOS."""

    chat_template, bos_token_id, eos_token_id, pad_token_id = None, None, 0, 1

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [min(ord(c), 255) for c in text]}

    def convert_ids_to_tokens(self, i):
        return chr(i)


class StubLM(torch.nn.Module):
    """Hidden state = a scalar per token: 1.0 for "?", 7.0 for the pad token, 0 otherwise. LM head:
    logit("A") = 2.0·h, logit("B") = 0.5·h. Counts the rows that reach the head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(256, 1)
        self.lm_head = torch.nn.Linear(1, 256, bias=False)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[ord("?")] = 1.0
            self.embed.weight[CharTokenizer.pad_token_id] = 7.0
            self.lm_head.weight.zero_()
            self.lm_head.weight[ord("A")] = 2.0
            self.lm_head.weight[ord("B")] = 0.5
        self.head_rows = []
        self.lm_head.register_forward_hook(lambda module, args, out: self.head_rows.append(tuple(args[0].shape)))

    def get_decoder(self):
        return lambda input_ids, attention_mask, position_ids=None: types.SimpleNamespace(
            last_hidden_state=self.embed(input_ids))

    def get_output_embeddings(self):
        return self.lm_head


def test_local_judge_reads_the_choice_logits_by_hand():
    model = StubLM()
    judge = LocalLMJudge(model, CharTokenizer(), template=JudgeTemplate("{a} or {b}?", choices=("A", "B")),
                         batch_size=4)
    # every judge prompt ends in "?": logits A = 2.0, B = 0.5, so P(first) = σ(1.5) = 0.817574 in
    # both orders; the pads (h = 7) would give σ(10.5) if the judge read a padded position
    a, b = ["x", "a longer one", "mid size"], ["yyyy", "z", "also something"]
    verdicts = judge.compare_batch(["q"] * 3, a, b)
    for v in verdicts:
        assert v.prob_a_first == pytest.approx(0.8175745, abs=1e-6)
        assert v.prob_a_second == pytest.approx(1 - 0.8175745, abs=1e-6)
        assert v.prob_a == pytest.approx(0.5) and v.position_bias == pytest.approx(0.3175745, abs=1e-6)
    # 6 judge prompts, batches of 4 and 2: the head saw one hidden state per prompt, (B, H)
    assert model.head_rows == [(4, 1), (2, 1)]
    assert judge.name == "local"


# ---------------------------------------------------------------- local LM judge on the tiny Llama

TINY_TEMPLATE = JudgeTemplate(text="{criterion} question: {question} response a: {a} response b: {b}",
                              choices=("A", "B"), cot_instruction="think.", verdict_prefix=" so:")
PROMPTS = ["User: what color is the dax?\nAssistant:", [{"role": "user", "content": "where does the wug live?"}],
           "User: is the zorp blue?\nAssistant:"]
A = [" the dax is red.", " the wug lives in the cave.", " no, the zorp is green."]
B = [" blue", " in the sea, hope this helps!", " yes"]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)


def test_local_judge_on_tiny_llama(tiny_lm):
    model, tokenizer = tiny_lm
    judge = LocalLMJudge(model, tokenizer, template=TINY_TEMPLATE, criterion="which is better?", batch_size=4,
                         max_length=128)
    batched = judge.compare_batch(PROMPTS, A, B)
    for v in batched:
        assert 0.0 < v.prob_a_first < 1.0 and 0.0 < v.prob_a_second < 1.0
        assert v.prob_a == pytest.approx(0.5 * (v.prob_a_first + v.prob_a_second))
    judge.batch_size = 1
    one_by_one = [judge.compare_batch([p], [a], [b])[0] for p, a, b in zip(PROMPTS, A, B)]
    for x, y in zip(batched, one_by_one):
        assert x.prob_a_first == pytest.approx(y.prob_a_first, abs=1e-5)
        assert x.prob_a_second == pytest.approx(y.prob_a_second, abs=1e-5)
    # the verdict is read at the chat template's generation prompt: "User: <message>\nAssistant:"
    text = judge.prompt_text(TINY_TEMPLATE.message(PROMPTS[0], A[0], B[0], "which is better?"))
    assert text.startswith("User: which is better? question: what color is the dax?") and text.endswith("Assistant:")
    ids, (first, second) = judge.choice_ids(text)
    assert tokenizer.convert_ids_to_tokens([first, second]) == ["A", "B"] and ids[-1] != first
    # a criterion given per call replaces the default one, and changes the verdict
    assert judge.compare(PROMPTS[0], A[0], B[0], criterion="which is shorter?") != pytest.approx(batched[0].prob_a)


def test_local_judge_errors_name_what_is_wrong(tiny_lm, caplog):
    model, tokenizer = tiny_lm
    too_short = LocalLMJudge(model, tokenizer, template=TINY_TEMPLATE, criterion="which?", max_length=80)
    with pytest.raises(ValueError, match=r"comparison 1: the judge prompt is \d+ tokens, more than max_length=80"):
        too_short.compare_batch(["hi", "tell me about the wug " * 5], ["a", "b"], ["c", "d"])
    # " A" and " B" both start with the byte-level space token "Ġ" in the tiny tokenizer
    same = LocalLMJudge(model, tokenizer, template=JudgeTemplate(TINY_TEMPLATE.text, choices=(" A", " B")))
    with pytest.raises(ValueError, match=r"choices ' A' and ' B' both start with the token 'Ġ'"):
        same.compare("hi", "a", "b")
    # " a" is two tokens ("Ġ", "a"), " b" one ("Ġb"): usable, with one warning
    multi = LocalLMJudge(model, tokenizer, template=JudgeTemplate(TINY_TEMPLATE.text, choices=(" a", " b")))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        multi.compare_batch(["hi"] * 2, ["a", "b"], ["c", "d"])
    assert [r.getMessage() for r in caplog.records if "2 tokens" in r.getMessage()] == [
        "judge choice ' a' is 2 tokens; its verdict is read from the first one only"]
    with pytest.raises(ValueError, match="needs its tokenizer"):
        LocalLMJudge(model)


def test_local_judge_chain_of_thought_and_bf16(tiny_lm):
    model, tokenizer = tiny_lm
    cot = LocalLMJudge(model, tokenizer, template=TINY_TEMPLATE, criterion="which?", cot=True, cot_max_new_tokens=4,
                       max_length=128)
    verdicts = cot.compare_batch(PROMPTS[:2], A[:2], B[:2])
    for v in verdicts:
        assert 0.0 < v.prob_a < 1.0 and v.prob_a_second is not None
        assert isinstance(v.rationale, str) and "\n\n" in v.rationale  # both orders' reasoning
    assert cot._cut_at_verdict(" a is right. so: a") == " a is right."
    assert cot._cut_at_verdict(" it is red. also: it is big. so: b") == " it is red. also: it is big."  # a word, not a suffix
    fp32 = LocalLMJudge(model, tokenizer, template=TINY_TEMPLATE).compare_batch(PROMPTS, A, B)
    bf16 = LocalLMJudge(model, tokenizer, template=TINY_TEMPLATE, precision="bf16").compare_batch(PROMPTS, A, B)
    for x, y in zip(fp32, bf16):
        assert y.prob_a_first == pytest.approx(x.prob_a_first, abs=0.02)


# ---------------------------------------------------------------- HTTP judge against a fake server


def chat_answer(text, top=None):
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
    if top is not None:
        choice["logprobs"] = {"content": [{"token": text, "logprob": top[0]["logprob"], "top_logprobs": top}]}
    return {"choices": [choice]}


TOP = [{"token": "A", "logprob": -0.2}, {"token": " A", "logprob": -2.0}, {"token": "B", "logprob": -1.5}]


class FakeServer(ThreadingHTTPServer):
    """Records every request; fails the first ``fail_first`` with ``fail_status``; answers ``reply``."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.requests, self.lock = [], threading.Lock()
        self.fail_first, self.fail_status, self.delay = 0, 503, 0.0
        self.reply = lambda body: (200, chat_answer("A", TOP))
        self.in_flight = self.max_in_flight = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class FakeHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            number = len(server.requests)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        time.sleep(server.delay)
        status, payload = (server.fail_status, {"error": {"message": "busy"}}) if number <= server.fail_first \
            else server.reply(body)
        with server.lock:
            server.in_flight -= 1
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_judge_reads_top_logprobs(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = HTTPJudge(server.url, "judge-model", criterion="which is better?")
    v = judge.compare_batch(["what is the dax?"], ["red"], ["blue"])[0]
    # the server always answers A with P(A) = 0.810456 (by hand above): a pure position judge
    assert v.prob_a_first == pytest.approx(0.8104563, abs=1e-7)
    assert v.prob_a_second == pytest.approx(1 - 0.8104563, abs=1e-7)
    assert v.prob_a == pytest.approx(0.5) and v.position_bias == pytest.approx(0.3104563, abs=1e-7)
    shown = JudgeTemplate().render("what is the dax?", "red", "blue", "which is better?")  # a first
    first = next(r for r in server.requests if r["body"]["messages"][0]["content"] == shown)
    assert first["path"] == "/v1/chat/completions" and "Authorization" not in first["headers"]
    assert first["body"] == {"model": "judge-model", "max_tokens": 1, "temperature": 0.0, "logprobs": True,
                             "top_logprobs": 20, "messages": [{"role": "user", "content": shown}]}
    assert judge.stats == {"requests": 2, "cache_hits": 0, "retries": 0, "parse_fallbacks": 0, "unparseable": 0}


@pytest.mark.parametrize("status", [503, 429])
def test_http_judge_retries_busy_servers(server, status):
    server.fail_first, server.fail_status = 2, status
    judge = HTTPJudge(server.url, "m", both_orders=False, backoff=0.01)
    assert judge.compare("p", "a", "b") == pytest.approx(0.8104563, abs=1e-7)
    assert len(server.requests) == 3 and judge.stats["retries"] == 2 and judge.stats["requests"] == 3
    server.fail_first = 100
    with pytest.raises(RuntimeError, match=f"{server.url}/chat/completions failed after 2 attempts"):
        HTTPJudge(server.url, "m", both_orders=False, retries=1, backoff=0.0).compare("p", "a2", "b2")


def test_http_judge_fails_at_once_on_client_errors(server):
    server.reply = lambda body: (400, {"error": {"message": "model 'nope' does not exist"}})
    with pytest.raises(RuntimeError, match=r"/v1/chat/completions answered HTTP 400: model 'nope' does not exist"):
        HTTPJudge(server.url, "nope", backoff=0.01).compare("p", "a", "b")
    assert len(server.requests) <= 2  # no retries (the two orders were in flight at once)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(RuntimeError, match="failed after 2 attempts"):
        HTTPJudge(f"http://127.0.0.1:{closed}/v1", "m", retries=1, backoff=0.0).compare("p", "a", "b")


def test_http_judge_parses_text_when_there_are_no_logprobs(server):
    server.reply = lambda body: (200, chat_answer("B"))
    judge = HTTPJudge(server.url, "m", both_orders=False)
    assert judge.compare("p", "a", "b") == 0.0
    server.reply = lambda body: (200, chat_answer("maybe"))
    assert judge.compare("p", "a2", "b2") == 0.5
    assert judge.stats["parse_fallbacks"] == 2 and judge.stats["unparseable"] == 1


def test_http_judge_chain_of_thought_reads_the_token_after_the_verdict(server):
    words = ["Because", " A", " is", " rude", ".", "\n", "Verdict", ":", "\n", "B"]
    tops = [[{"token": w, "logprob": -0.01}] for w in words[:-1]] + [[{"token": "B", "logprob": -0.1},
                                                                       {"token": "A", "logprob": -2.4}]]
    answer = {"choices": [{"message": {"content": "".join(words)}, "logprobs": {"content": [
        {"token": w, "logprob": t[0]["logprob"], "top_logprobs": t} for w, t in zip(words, tops)]}}]}
    server.reply = lambda body: (200, answer)
    judge = HTTPJudge(server.url, "m", both_orders=False, cot=True, cot_max_new_tokens=64)
    v = judge.compare_batch(["p"], ["a"], ["b"])[0]
    assert v.prob_a == pytest.approx(sigmoid(-2.4 + 0.1))  # σ(−2.3) = 0.091123
    assert v.rationale == "Because A is rude."
    assert server.requests[0]["body"]["max_tokens"] == 64
    assert server.requests[0]["body"]["messages"][0]["content"].endswith(JudgeTemplate().cot_instruction)


def test_http_judge_cache_survives_a_restart(server, tmp_path):
    cache = tmp_path / "judge_cache.sqlite"
    prompts, a, b = ["p1", "p2", "p3"], ["x1", "x2", "x3"], ["y1", "y2", "y3"]
    judge = HTTPJudge(server.url, "m", cache=str(cache), concurrency=3)
    first = judge.compare_batch(prompts, a, b)
    assert len(server.requests) == 6  # 3 comparisons × 2 orders
    assert judge.compare_batch(prompts, a, b) == first and len(server.requests) == 6
    restarted = HTTPJudge(server.url, "m", cache=str(cache))
    assert restarted.compare_batch(prompts, a, b) == first and len(server.requests) == 6
    assert restarted.stats["cache_hits"] == 6 and restarted.stats["requests"] == 0
    restarted.compare_batch(prompts[:1], a[:1], b[:1], criterion="which is kinder?")  # another question
    assert len(server.requests) == 8


def test_http_judge_sends_the_api_key_but_never_stores_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-secret-123")
    cache = tmp_path / "cache.sqlite"
    HTTPJudge(server.url, "m", api_key_env="JUDGE_API_KEY", cache=str(cache)).compare("p", "a", "b")
    assert {r["headers"]["Authorization"] for r in server.requests} == {"Bearer sk-secret-123"}
    assert b"sk-secret-123" not in cache.read_bytes()
    assert os.environ["JUDGE_API_KEY"] not in json.dumps([r["body"] for r in server.requests])


def test_http_judge_keeps_to_its_concurrency(server):
    server.delay = 0.05
    judge = HTTPJudge(server.url, "m", concurrency=3)
    judge.compare_batch(["p"] * 8, [f"a{i}" for i in range(8)], [f"b{i}" for i in range(8)])
    assert len(server.requests) == 16
    assert 2 <= server.max_in_flight <= 3


# ---------------------------------------------------------------- reward-model and Python judges


class StubScorer:
    def __init__(self, rewards):
        self.rewards, self.calls = rewards, 0

    def score(self, prompts, responses):
        self.calls += 1
        return torch.tensor([self.rewards[r] for r in responses])


def test_reward_model_judge_by_hand():
    scorer = StubScorer({"good": 1.0, "bad": 0.0})
    judge = RewardModelJudge(scorer)
    v, w = judge.compare_batch(["p", "p"], ["good", "bad"], ["bad", "good"])
    # σ(1.0 − 0.0) = 0.731059 ; σ(0.0 − 1.0) = 0.268941
    assert v.prob_a == pytest.approx(0.7310586, abs=1e-7) and w.prob_a == pytest.approx(0.2689414, abs=1e-7)
    assert v.prob_a_first is None and v.position_bias is None
    assert scorer.calls == 1  # every a and b in one scoring call


def test_reward_model_judge_applies_the_scorers_temperature_by_hand():
    scorer = StubScorer({"good": 1.0, "bad": 0.0})
    scorer.temperature = 2.0  # as load_scorer sets it from the reward model folder
    (v,) = RewardModelJudge(scorer).compare_batch(["p"], ["good"], ["bad"])
    # σ((1.0 − 0.0) / 2) = σ(0.5) = 0.622459
    assert v.prob_a == pytest.approx(0.6224593, abs=1e-7)


def test_python_judge(monkeypatch):
    calls = []

    def by_length(prompt, a, b, criterion=None):
        calls.append(criterion)
        return 1.0 if len(a) > len(b) else 0.0

    judge = PythonJudge(by_length)
    assert judge.compare("p", "long one", "x") == 1.0 and calls == [None]
    assert judge.compare("p", "x", "long one", criterion="which is longer?") == 0.0 and calls[-1] == "which is longer?"
    assert PythonJudge(lambda p, a, b: 0.25).compare("p", "a", "b", criterion="ignored") == 0.25
    for bad in (1.5, "0.5", None, float("nan")):
        with pytest.raises(ValueError, match=r"judge function bad_fn returned .* for comparison 0"):
            PythonJudge(lambda p, a, b, v=bad: v, name="bad_fn").compare("p", "a", "b")
    module = types.ModuleType("my_judges")
    module.by_length = by_length
    monkeypatch.setitem(sys.modules, "my_judges", module)
    loaded = PythonJudge("my_judges:by_length", criterion="default question")
    assert loaded.name == "my_judges:by_length" and loaded.compare("p", "aa", "b") == 1.0
    assert calls[-1] == "default question"


# ---------------------------------------------------------------- build_judge


@pytest.mark.parametrize("fields, message", [
    ({"kind": "http", "model": "m"}, "judge.url"),
    ({"kind": "http", "url": "http://x/v1"}, "judge.model"),
    ({"kind": "local"}, "judge.model"),
    ({"kind": "reward"}, "judge.model"),
    ({"kind": "python"}, "judge.function"),
    ({"kind": "oracle"}, "judge.kind"),
    ({"kind": "python", "function": "m:f", "choices": ["A", "A"]}, "judge.choices"),
])
def test_build_judge_names_the_missing_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        build_judge(JudgeConfig(**fields))


def test_build_judge_builds_each_kind(tmp_path, monkeypatch, tiny_model_dir):
    template = tmp_path / "judge.txt"
    template.write_text("{criterion}\n{question}\n1: {a}\n2: {b}\nAnswer 1 or 2.")
    judge = build_judge(JudgeConfig(kind="http", url="http://127.0.0.1:9/v1/", model="m", template=str(template),
                                    choices=["1", "2"], concurrency=2, cache=str(tmp_path / "c.sqlite")))
    assert isinstance(judge, HTTPJudge) and judge.url == "http://127.0.0.1:9/v1/chat/completions"
    assert judge.template.choices == ("1", "2") and judge.template.text.startswith("{criterion}")
    assert judge.concurrency == 2 and judge.name == "http:m"
    local = build_judge(JudgeConfig(kind="local", model=str(tiny_model_dir), batch_size=2))
    assert isinstance(local, LocalLMJudge) and local.batch_size == 2 and local.name == "local:model"
    monkeypatch.setattr("rlhfkit.models.reward_model.load_scorer", lambda path, batch_size: StubScorer({}))
    assert isinstance(build_judge(JudgeConfig(kind="reward", model="rm")), RewardModelJudge)
    monkeypatch.setitem(sys.modules, "my_judges", types.ModuleType("my_judges"))
    sys.modules["my_judges"].half = lambda p, a, b: 0.5
    assert build_judge(JudgeConfig(kind="python", function="my_judges:half")).compare("p", "a", "b") == 0.5
    template.write_text("{criterion} {answer_a}")
    with pytest.raises(ConfigError, match=r"judge.template .*judge.txt: bad placeholder 'answer_a'"):
        build_judge(JudgeConfig(kind="http", url="http://x/v1", model="m", template=str(template)))
    with pytest.raises(ConfigError, match="judge.template: cannot read"):
        build_judge(JudgeConfig(kind="http", url="http://x/v1", model="m", template=str(tmp_path / "none.txt")))
