"""``POST /v1/completions``: the rollout contract, OpenAI's completions API as vLLM extends it.

What a trainer's :class:`rlhfkit.rollout.server.ServerGenerator` sends and reads:

- ``prompt``: a string, a list of strings, a list of token ids, or a list of lists of token ids
  (vLLM accepts all four); ``n`` samples per prompt; ``max_tokens``; ``temperature`` (> 0: this
  server samples); ``top_p``; ``top_k`` (vLLM's extra parameter; 0 or −1 = off); ``seed``;
  ``logprobs`` (an integer; any value, 0 included, returns the sampled tokens' log-probs);
  ``return_tokens_as_token_ids`` (vLLM: the tokens of ``logprobs.tokens`` read "token_id:N").
- every choice stops after its first stop token (the tokenizer's EOS and the generation config's
  ``eos_token_id``s) or at ``max_tokens``; choices are ordered prompt-major (index = prompt · n + k),
  as vLLM orders them.
- each choice carries ``token_ids`` (the generated ids, the stop token included: vLLM's
  ``return_token_ids`` field) and, when asked, ``logprobs`` in OpenAI's completions shape
  ``{tokens, token_logprobs, top_logprobs: null, text_offset}``. The log-probs are those of the
  temperature-scaled distribution before top-p / top-k filtering, exactly what
  :class:`rlhfkit.rollout.hf.HFGenerator` records and what the trainer's forward recomputes
  (vLLM reports the same with ``--logprobs-mode processed_logprobs`` when top-p / top-k are off).
- the response also says ``weights_version``: the version of the weights that sampled it.

Sampling is :class:`~rlhfkit.rollout.hf.HFGenerator` itself, one batch per request (every prompt
× n, left-padded), so a request with a ``seed`` samples exactly what an in-process generator
seeded with ``torch.manual_seed(seed)`` samples on the same prompts.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import torch

from rlhfkit.rollout.base import SamplingConfig
from rlhfkit.rollout.hf import HFGenerator
from rlhfkit.serve.schema import RequestError

MAX_N = 64
MAX_PROMPTS = 1024


@dataclass
class CompletionRequest:
    """What one /v1/completions request asks for, OpenAI's defaults filled in."""

    prompts: list[list[int]]
    """token ids of each prompt (text prompts already encoded)"""
    model: str | None = None
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    token_ids_as_tokens: bool = False
    """vLLM's return_tokens_as_token_ids: logprobs.tokens are "token_id:N" strings"""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(body: dict, key: str, default: float, *, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{key} must be a number, got {value!r}", key)
    if value > high or value < low or (low_open and value == low):
        raise RequestError(f"{key} must lie in {'(' if low_open else '['}{low}, {high}], got {value}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, *, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise RequestError(f"{key} must be an integer between {low} and {high}, got {value!r}", key)
    return value


def _prompts(value, tokenizer, vocab_size: int) -> list[list[int]]:
    """The four prompt shapes vLLM accepts → token ids, each id checked against the vocabulary."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(_is_int(t) for t in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RequestError("prompt must be a string, a list of strings, a list of token ids or a list of lists "
                           "of token ids", "prompt")
    if len(value) > MAX_PROMPTS:
        raise RequestError(f"at most {MAX_PROMPTS} prompts per request, got {len(value)}", "prompt")
    out = []
    for i, p in enumerate(value):
        if isinstance(p, str):
            p = tokenizer(p, add_special_tokens=True)["input_ids"]
        elif not isinstance(p, list) or not all(_is_int(t) for t in p):
            raise RequestError(f"prompt[{i}] must be a string or a list of token ids", f"prompt[{i}]")
        if not p:
            raise RequestError(f"prompt[{i}] is empty", f"prompt[{i}]")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise RequestError(f"prompt[{i}] holds token id {bad[0]}, outside the vocabulary [0, {vocab_size})",
                               f"prompt[{i}]")
        out.append(list(p))
    return out


def parse_completion_request(body, tokenizer, *, vocab_size: int, max_tokens_limit: int) -> CompletionRequest:
    """Validate a /v1/completions body (RequestError naming the field when it is wrong)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if "prompt" not in body:
        raise RequestError("prompt is required", "prompt")
    if body.get("stream"):
        raise RequestError("streaming is not supported by rlhfkit serve; send stream: false", "stream")
    if body.get("echo"):
        raise RequestError("echo is not supported by rlhfkit serve", "echo")
    if body.get("stop"):
        raise RequestError("stop strings are not supported by /v1/completions here: choices stop at EOS",
                           "stop")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"model must be a string, got {model!r}", "model")
    temperature = _number(body, "temperature", 1.0, low=0.0, high=2.0)
    if temperature == 0:
        raise RequestError("temperature must be > 0: /v1/completions samples here (no greedy decoding)",
                           "temperature")
    top_k = _integer(body, "top_k", 0, low=-1, high=vocab_size)
    logprobs = body.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or logprobs < 0):
        raise RequestError(f"logprobs must be a non-negative integer, got {logprobs!r}", "logprobs")
    as_ids = body.get("return_tokens_as_token_ids", False)
    if not isinstance(as_ids, bool):
        raise RequestError(f"return_tokens_as_token_ids must be true or false, got {as_ids!r}",
                           "return_tokens_as_token_ids")
    return CompletionRequest(
        prompts=_prompts(body["prompt"], tokenizer, vocab_size), model=model,
        max_tokens=min(_integer(body, "max_tokens", 16, low=1, high=2 ** 31), max_tokens_limit),
        temperature=temperature, top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True),
        top_k=max(top_k, 0), n=_integer(body, "n", 1, low=1, high=MAX_N),
        seed=_integer(body, "seed", None, low=0, high=2 ** 63 - 1),
        logprobs=logprobs is not None, token_ids_as_tokens=as_ids)


@dataclass
class Sample:
    token_ids: list[int]
    """generated ids, up to and including the first stop token"""
    logprobs: list[float]
    finish_reason: str
    """'stop' (a stop token) or 'length' (max_tokens or the context reached)"""


def sample(model, tokenizer, request: CompletionRequest, *, context: int | None) -> list[Sample]:
    """Every prompt × n in one :class:`HFGenerator` batch (under ``torch.manual_seed(seed)`` when the
    request has a seed, without touching the caller's random state); prompt-major order."""
    longest = max(len(p) for p in request.prompts)
    budget = request.max_tokens
    if context is not None:
        if longest >= context:
            raise RequestError(f"a prompt is {longest} tokens but the model's context is {context}", "prompt")
        budget = min(budget, context - longest)
    rows = [p for p in request.prompts for _ in range(request.n)]
    generator = HFGenerator(model, tokenizer, SamplingConfig(
        max_new_tokens=budget, temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
        batch_size=len(rows)))
    # manual_seed seeds every device; fork_rng restores the CPU stream (the server's own draws)
    with torch.random.fork_rng(devices=[]):
        if request.seed is not None:
            torch.manual_seed(request.seed)
        rollout = generator.generate(rows)
    out = []
    for ids, mask, lps, eos in zip(rollout.response_ids, rollout.response_mask, rollout.logprobs, rollout.has_eos):
        n = int(mask.sum())
        out.append(Sample(ids[:n].tolist(), lps[:n].tolist(), "stop" if bool(eos) else "length"))
    return out


def completion_response(name: str, tokenizer, request: CompletionRequest, samples: list[Sample], *,
                        weights_version: int) -> dict:
    """OpenAI's text_completion body, with vLLM's token_ids and rlhfkit's weights_version."""
    choices = []
    for index, s in enumerate(samples):
        choice = {"index": index, "text": tokenizer.decode(s.token_ids, skip_special_tokens=True),
                  "finish_reason": s.finish_reason, "stop_reason": None, "token_ids": s.token_ids, "logprobs": None}
        if request.logprobs:
            tokens = ([f"token_id:{t}" for t in s.token_ids] if request.token_ids_as_tokens
                      else tokenizer.convert_ids_to_tokens(s.token_ids))
            offsets, at = [], 0
            for t in s.token_ids:
                offsets.append(at)
                at += len(tokenizer.decode([t], skip_special_tokens=True))
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": s.logprobs, "top_logprobs": None,
                                  "text_offset": offsets}
        choices.append(choice)
    prompt_tokens = sum(len(p) for p in request.prompts)
    completion_tokens = sum(len(s.token_ids) for s in samples)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": name, "choices": choices, "weights_version": weights_version,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
