"""Rollouts from a server with weight sync, on loopback with a tiny model (issue 13 §2).

The completions contract (token-id prompts, n, seed, log-probs the trainer's forward reproduces,
token ids), weight reload (full and LoRA adapter, disk and http), and PPO / GRPO trained through
``rlhfkit serve``: the same first-update KL and learning curve as the in-process backend, a weights
version that advances every step, and a server restart survived mid-run.
"""

import json

import httpx
import pytest
import torch

from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.models.forward import sequence_logprobs
from rlhfkit.models.loading import LoraSettings, load_causal_lm
from rlhfkit.rollout.base import SamplingConfig
from rlhfkit.rollout.hf import HFGenerator
from rlhfkit.rollout.server import RolloutConfig, ServerGenerator
from rlhfkit.serve.testing import restartable_model_server, running_model_server
from rlhfkit.train.rl.grpo import GRPOConfig, run_grpo
from rlhfkit.train.rl.ppo import PPOConfig, run_ppo
from rlhfkit.train.optim import OptimConfig

PROMPTS = [f"User: what color is the {n}?\nAssistant:" for n in ("dax", "wug", "zorp", "fep")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def encode(tokenizer, prompts):
    return [encode_prompt(tokenizer, p) for p in prompts]


def forward_logprobs(model, tokenizer, prompt_ids, responses, temperature):
    """The trainer's forward on (prompt, response) rows: the response tokens' log-probs (B, R)."""
    from rlhfkit.data.tokenize import pad_batch

    ids, mask = pad_batch(prompt_ids, tokenizer.pad_token_id, side="left")
    resp, resp_mask = pad_batch(responses, tokenizer.pad_token_id, side="right")
    P = ids.shape[1]
    full, attn = torch.cat([ids, resp], 1), torch.cat([mask, resp_mask], 1)
    comp = torch.cat([torch.zeros_like(mask), resp_mask], 1)
    with torch.no_grad():
        return sequence_logprobs(model, full, attn, comp, temperature=temperature)[:, P - 1:] * resp_mask, resp_mask


# ---------------------------------------------------------------------------- the contract


def test_completions_token_ids_logprobs_and_seed(tiny_model_dir, tiny_tokenizer):
    tok = tiny_tokenizer
    prompt_ids = encode(tok, PROMPTS[:2])
    body = {"prompt": prompt_ids, "n": 3, "max_tokens": 6, "temperature": 0.7, "top_k": -1, "seed": 11,
            "logprobs": 0, "return_tokens_as_token_ids": True}
    with running_model_server(tiny_model_dir) as url:
        answer = httpx.post(url + "/v1/completions", json=body, timeout=60).json()
        again = httpx.post(url + "/v1/completions", json=body, timeout=60).json()
        text = httpx.post(url + "/v1/completions", json={**body, "prompt": PROMPTS[0], "n": 1}, timeout=60).json()
        bad = httpx.post(url + "/v1/completions", json={**body, "prompt": [[1, 10 ** 6]]}, timeout=60)
        greedy = httpx.post(url + "/v1/completions", json={**body, "temperature": 0}, timeout=60)
        version = httpx.get(url + "/weights_version", timeout=10).json()
    choices = answer["choices"]
    assert [c["index"] for c in choices] == list(range(6))  # prompt-major: prompt i, sample k at 3i + k
    assert answer["weights_version"] == 0 and version == {"version": 0, "source": None}
    assert [c["token_ids"] for c in again["choices"]] == [c["token_ids"] for c in choices]  # same seed, same samples
    model = load_causal_lm(tiny_model_dir)
    stop = tok.eos_token_id
    for c in choices:
        ids, lps = c["token_ids"], c["logprobs"]["token_logprobs"]
        assert c["logprobs"]["tokens"] == [f"token_id:{t}" for t in ids]  # vLLM's return_tokens_as_token_ids
        assert len(lps) == len(ids) and 1 <= len(ids) <= 6
        assert (c["finish_reason"] == "stop") == (ids[-1] == stop) and stop not in ids[:-1]
    # the trainer's forward at the same temperature recomputes the sampler's log-probs (fp32)
    rows = [p for p in prompt_ids for _ in range(3)]
    train, mask = forward_logprobs(model, tok, rows, [c["token_ids"] for c in choices], 0.7)
    sampled = torch.zeros_like(train)
    for i, c in enumerate(choices):
        sampled[i, : len(c["token_ids"])] = torch.tensor(c["logprobs"]["token_logprobs"])
    assert torch.allclose(train, sampled, atol=1e-4), (train - sampled).abs().max()
    # the same seed in process (HFGenerator on the same rows, one batch) samples the very same tokens
    torch.manual_seed(11)
    local = HFGenerator(model, tok, SamplingConfig(max_new_tokens=6, temperature=0.7, batch_size=6)).generate(rows)
    assert [r[m.bool()].tolist() for r, m in zip(local.response_ids, local.response_mask)] == \
        [c["token_ids"] for c in choices]
    # a text prompt is encoded by the server (with the tokenizer's BOS, as the trainer encodes it)
    assert len(text["choices"]) == 1 and text["usage"]["prompt_tokens"] == len(prompt_ids[0])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt[0]"
    assert greedy.status_code == 400 and greedy.json()["error"]["param"] == "temperature"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_weight_sync_reaches_the_server(lora, tiny_model_dir, tiny_tokenizer, tmp_path):
    """Change the policy's weights, sync (disk, then http), and the server's log-probs are the new policy's."""
    tok = tiny_tokenizer
    policy = load_causal_lm(tiny_model_dir, lora=LoraSettings(r=4, alpha=8) if lora else None)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if not lora or "lora_" in name:  # LoRA: only the adapter moves (B starts at 0)
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    sampling = SamplingConfig(max_new_tokens=5, temperature=1.0, batch_size=8)
    prompt_ids = encode(tok, PROMPTS)
    with running_model_server(tiny_model_dir) as url:
        for k, sync in enumerate(("disk", "http"), start=1):
            gen = ServerGenerator(policy, tok, sampling, RolloutConfig(backend="server", url=url, sync=sync),
                                  sync_dir=tmp_path / sync, seed=k)
            gen.version = k - 1  # a second trainer continues the numbering
            roll = gen.generate(prompt_ids)
            assert gen.last_stats["rollout/weights_version"] == k
            assert httpx.get(url + "/weights_version").json()["version"] == k
            responses = [r[m.bool()].tolist() for r, m in zip(roll.response_ids, roll.response_mask)]
            train, mask = forward_logprobs(policy, tok, prompt_ids, responses, 1.0)
            assert torch.allclose(train, roll.logprobs[:, : train.shape[1]], atol=1e-4)
            gen.close()
        if lora:  # only the adapter travels: a few KB, not the model
            assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["v000001"]
            files = sorted(p.name for p in (tmp_path / "disk" / "v000001").iterdir())
            assert files == ["adapter_config.json", "adapter_model.safetensors"]


# ---------------------------------------------------------------------------- training through the server


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 8))
    return path


class Letters:
    """Fraction of ASCII lowercase letters in each response; keeps every score it gave."""

    def __init__(self, on_call=None):
        self.scores: list[list[float]] = []
        self.on_call = on_call

    def __call__(self, prompts, responses):
        if self.on_call is not None:
            self.on_call(len(self.scores))
        self.scores.append([sum(c.islower() and c.isascii() for c in r) / max(len(r), 1) for r in responses])
        return self.scores[-1]


def ppo_config(model, prompts, out, **kw):
    base = dict(model=str(model), prompts=str(prompts), output_dir=str(out), value_model="head",
                sampling=SamplingConfig(max_new_tokens=8, batch_size=16), batch_size=16, num_minibatches=2,
                num_ppo_epochs=2, total_steps=10, progress=False, save_every=0,
                optim=OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0), seed=1,
                precision="fp32")  # auto picks bf16 autocast on a CPU that has it: a 1e-3 gap, not 1e-6
    base.update(kw)
    return PPOConfig(**base)


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]


def test_ppo_through_the_server_matches_the_in_process_backend(tiny_model_dir, prompt_file, tmp_path):
    local, remote = Letters(), Letters()
    run_ppo(ppo_config(tiny_model_dir, prompt_file, tmp_path / "hf"), reward_fns=[local])
    with running_model_server(tiny_model_dir) as url:
        run_ppo(ppo_config(tiny_model_dir, prompt_file, tmp_path / "srv",
                           rollout=RolloutConfig(backend="server", url=url)), reward_fns=[remote])
        served = httpx.get(url + "/weights_version").json()
    hf, srv = rows(tmp_path / "hf"), rows(tmp_path / "srv")
    n = len(srv)
    # the weights reach the server before every rollout: version k samples step k
    assert [r["rollout/weights_version"] for r in srv] == list(range(1, n + 1)) and served["version"] == n
    # the server samples with the trainer's weights: its log-probs are the trainer's recomputed ones (fp32)
    assert max(r["rollout/logprob_diff_max"] for r in srv) < 1e-4
    assert max(r["rollout/logprob_diff_max"] for r in hf) < 1e-4  # and so are transformers' own
    # the first update: KL 0 before it (policy == reference), ratio 1 on its first minibatch, both backends
    for m in (hf, srv):
        assert m[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)
        assert m[0]["policy/ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-6)
    # KL after the first update (step 2): from different samples, so equal only within noise; seen
    # 0.153 (hf) and 0.221 (server) on 16 responses of 8 tokens. A loose check (stale weights are
    # caught above by the log-prob gap) that catches an update that did nothing or ran away
    kl_hf, kl_srv = hf[1]["objective/kl"], srv[1]["objective/kl"]
    assert 0.01 < kl_hf and 0.01 < kl_srv and 0.33 < kl_srv / kl_hf < 3, (kl_hf, kl_srv)
    # the learning curves: both rise, and agree within sampling noise: the mean score of the last
    # three steps (3 × 16 responses each side) differs by less than 4 standard errors of the difference
    for scores in (local.scores, remote.scores):
        first = sum(map(sum, scores[:3])) / 48
        last = sum(map(sum, scores[-3:])) / 48
        assert last > first + 0.1, (first, last)
    a, b = torch.tensor(local.scores[-3:]).flatten(), torch.tensor(remote.scores[-3:]).flatten()
    se = float((a.var() / a.numel() + b.var() / b.numel()).sqrt())
    print("last-3-step mean score: hf", float(a.mean()), "server", float(b.mean()), "4 SE", 4 * se)
    assert abs(float(a.mean() - b.mean())) < 4 * se


def test_a_server_restart_mid_run_is_survived(tiny_model_dir, prompt_file, tmp_path):
    import threading

    server = restartable_model_server(tiny_model_dir)
    restarted = threading.Event()

    def crash_after_step_one(calls):  # called while step 1 scores: the server goes down, back 1.5 s later
        if calls == 0:
            server.stop()
            threading.Timer(1.5, lambda: (server.start(), restarted.set())).start()

    url = server.start()
    try:
        run_ppo(ppo_config(tiny_model_dir, prompt_file, tmp_path / "ppo", total_steps=4,
                           rollout=RolloutConfig(backend="server", url=url, retry_backoff_s=0.2, max_wait_s=60)),
                reward_fns=[Letters(on_call=crash_after_step_one)])
        served = httpx.get(url + "/weights_version").json()
    finally:
        server.stop()
    m = rows(tmp_path / "ppo")
    assert restarted.is_set() and len(m) == 4
    assert m[1]["rollout/server_wait_s"] > 0 and m[1]["rollout/retries"] >= 1  # step 2 waited for the server
    assert all(r["rollout/server_wait_s"] == 0 for r in (m[0], m[2], m[3]))
    # the restarted server came back at version 0 with the original weights; the trainer resynced
    # before sampling (else its log-probs would be the original model's, not the trainer's)
    assert [r["rollout/weights_version"] for r in m] == [1, 2, 3, 4] and served["version"] == 4
    assert max(r["rollout/logprob_diff_max"] for r in m) < 1e-4


def test_grpo_through_the_server_with_http_sync_and_tis(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 4))
    with running_model_server(tiny_model_dir) as url:
        config = GRPOConfig(model=str(tiny_model_dir), prompts=str(prompts), output_dir=str(tmp_path / "grpo"),
                            sampling=SamplingConfig(max_new_tokens=8, batch_size=16), batch_size=16,
                            num_generations=4, total_steps=3, progress=False, save_every=0, seed=1, precision="fp32",
                            lora=LoraSettings(r=4, alpha=8),
                            optim=OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0),
                            rollout=RolloutConfig(backend="server", url=url, sync="http", tis_cap=2.0))
        run_grpo(config, reward_fns=[Letters()])
        served = httpx.get(url + "/weights_version").json()
    m = rows(tmp_path / "grpo")
    assert [r["rollout/weights_version"] for r in m] == [1, 2, 3] and served == {"version": 3, "source": "http"}
    assert max(r["rollout/logprob_diff_max"] for r in m) < 1e-4  # the merged adapter samples as the trainer's PEFT model
    assert all(r["policy/ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-6) for r in m)


# ---------------------------------------------------------------------------- vLLM / SGLang (GPU only)

ENGINES = {
    "vllm": ("vllm", lambda model, port: [
        "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(port), "--dtype", "float32",
        "--enforce-eager", "--gpu-memory-utilization", "0.2", "--logprobs-mode", "processed_logprobs",
        "--return-tokens-as-token-ids"]),
    "sglang": ("sglang", lambda model, port: [
        "-m", "sglang.launch_server", "--model-path", model, "--port", str(port), "--dtype", "float32",
        "--mem-fraction-static", "0.2"]),
}


def _engine_missing(kind: str) -> bool:
    import importlib.util

    return not torch.cuda.is_available() or importlib.util.find_spec(ENGINES[kind][0]) is None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_grpo_through_a_gpu_engine(kind, tiny_model_dir, tmp_path):
    """Unverified until a GPU machine runs it: GRPO for a few steps through `vllm serve` / SGLang,
    weights synced by their reload routes, the sampler's log-probs close to the trainer's."""
    if _engine_missing(kind):
        pytest.skip(f"needs a CUDA GPU and {ENGINES[kind][0]} installed")
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time

    served = tmp_path / "served"
    shutil.copytree(tiny_model_dir, served)  # vLLM reloads from the folder it serves: the trainer writes there
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    proc = subprocess.Popen([sys.executable, *ENGINES[kind][1](str(served), port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, f"{kind} did not start"
            time.sleep(2)
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 4))
        config = GRPOConfig(model=str(tiny_model_dir), prompts=str(prompts), output_dir=str(tmp_path / "grpo"),
                            sampling=SamplingConfig(max_new_tokens=8, batch_size=16), batch_size=16,
                            num_generations=4, total_steps=3, progress=False, save_every=0, seed=1, precision="fp32",
                            optim=OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0),
                            rollout=RolloutConfig(backend="server", url=url, server_kind=kind,
                                                  sync_dir=str(served if kind == "vllm" else tmp_path / "sync")))
        run_grpo(config, reward_fns=[Letters()])
    finally:
        proc.terminate()
        proc.wait(60)
    m = rows(tmp_path / "grpo")
    assert [r["rollout/weights_version"] for r in m] == [1, 2, 3]
    assert max(r["rollout/logprob_diff_mean"] for r in m) < 1e-2, [r["rollout/logprob_diff_mean"] for r in m]
