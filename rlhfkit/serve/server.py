"""The HTTP app: OpenAI-compatible chat completions for a causal LM, ``/score`` for a reward model.

    GET  /health                 {"status": "ok", "chat": name | null, "reward": name | null}
    GET  /v1/models              OpenAI's model list
    POST /v1/chat/completions    OpenAI's chat format, with logprobs / top_logprobs
    POST /score                  {"prompts", "responses"} -> {"rewards"} (HTTPRewardSource's protocol)
    POST /v1/completions         the rollout contract: token-id prompts, n, seed, sampled log-probs and
                                 token ids (:mod:`rlhfkit.serve.completions`)
    POST /reload_weights         {"path": folder, "version": k}: load safetensors (full or LoRA adapter)
    POST /update_weights         the same payload as safetensors bytes in the body (?version=k)
    GET  /weights_version        {"version": k, "source": ...} (:mod:`rlhfkit.serve.weights`)

One model object is not safe to run from several threads at once, so every request that touches a
model holds one lock; FastAPI serves the others (health, errors) meanwhile. Errors are OpenAI's
``{"error": {"message", "type", "param", "code"}}`` with HTTP 400 / 401 / 404, never a traceback.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from rlhfkit.serve.completions import completion_response, parse_completion_request, sample
from rlhfkit.serve.generate import ChatModel, Choice, TokenLogprob
from rlhfkit.serve.schema import RequestError, parse_chat_request, parse_score_request
from rlhfkit.serve.weights import WeightState, apply_weights, read_bytes, read_folder

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


# ---------------------------------------------------------------- model folders


@dataclass
class Backends:
    """What one server serves: a chat model, a reward scorer, or both."""

    chat: ChatModel | None = None
    scorer: object | None = None
    """a :class:`rlhfkit.models.reward_model.RewardScorer`"""
    reward_name: str | None = None


def load_backends(model_dirs: list[str | Path], *, served_name: str | None = None, precision: str = "fp32",
                  device: str = "auto", max_context: int | None = None) -> Backends:
    """Load each folder as a causal LM or a reward model (at most one of each). ``max_context``
    overrides the chat model's context (prompt + completion), by default its max_position_embeddings:
    a rotary-position model runs past it, with quality falling off."""
    import torch

    from rlhfkit.models.loading import load_causal_lm, load_tokenizer, model_label
    from rlhfkit.models.reward_model import is_reward_folder, load_scorer

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is visible to torch (use --device cpu)")
    dtype = PRECISIONS[precision]
    backends = Backends()
    for path in map(Path, model_dirs):
        if is_reward_folder(path):
            if backends.scorer is not None:
                raise ValueError(f"two reward models given ({backends.reward_name} and {path}): serve one")
            backends.scorer = load_scorer(path)
            for member in backends.scorer.models:
                member.to(device=device, dtype=getattr(torch, dtype)).requires_grad_(False)
            backends.reward_name = model_label(path)
        else:
            if backends.chat is not None:
                raise ValueError(f"two causal LMs given ({backends.chat.name} and {path}): serve one")
            model = load_causal_lm(path, dtype=dtype).to(device).requires_grad_(False)
            backends.chat = ChatModel(model, load_tokenizer(path), served_name or model_label(path), max_context=max_context)
    if backends.chat is None and served_name and backends.scorer is not None:
        backends.reward_name = served_name
    if backends.chat is None and backends.scorer is None:
        raise ValueError("give a model folder to serve")
    return backends


# ---------------------------------------------------------------- responses


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _logprobs(choice: Choice) -> dict | None:
    if choice.logprobs is None:
        return None

    def entry(t: TokenLogprob) -> dict:
        return {"token": t.token, "logprob": t.logprob, "bytes": t.bytes}

    return {"content": [{**entry(t), "top_logprobs": [entry(top) for top in t.top]} for t in choice.logprobs]}


def chat_response(name: str, prompt_tokens: int, choices: list[Choice]) -> dict:
    completion_tokens = sum(c.n_tokens for c in choices)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                     "finish_reason": c.finish_reason, "logprobs": _logprobs(c)} for i, c in enumerate(choices)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


# ---------------------------------------------------------------- the app


def create_app(backends: Backends, *, api_key: str | None = None, max_new_tokens_limit: int = 1024) -> FastAPI:
    """The FastAPI app over loaded backends; ``api_key`` (if set) is required as a Bearer token."""
    app = FastAPI(title="rlhfkit serve", docs_url=None, redoc_url=None)
    lock = threading.Lock()
    chat, scorer = backends.chat, backends.scorer
    weights = WeightState()

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                              code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, err: RequestError):
        return _error(err.status, err.message, param=err.param, code=err.code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception):  # starlette still logs the traceback
        return _error(500, f"internal error: {type(err).__name__}: {err}", kind="server_error")

    async def body_of(request: Request):
        try:
            return await request.json()
        except ValueError:
            raise RequestError("the request body is not valid JSON") from None

    def locked(fn, *args):
        with lock:
            return fn(*args)

    @app.get("/health")
    async def health():
        return {"status": "ok", "chat": chat.name if chat else None, "reward": backends.reward_name}

    @app.get("/v1/models")
    async def models():
        served = [(chat.name, "chat")] if chat else []
        served += [(backends.reward_name, "reward")] if scorer is not None else []
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "rlhfkit",
                                            "rlhfkit_kind": kind} for name, kind in served]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if chat is None:
            raise RequestError("this server has no chat model (only /score): start it with a causal LM folder",
                               status=404, code="model_not_found")
        parsed = parse_chat_request(await body_of(request), max_tokens_limit=max_new_tokens_limit)
        if parsed.model is not None and parsed.model != chat.name:
            raise RequestError(f"model {parsed.model!r} is not served here; this server serves {chat.name!r}",
                               "model", status=404, code="model_not_found")
        prompt_tokens, choices = await run_in_threadpool(locked, chat.complete, parsed)
        return chat_response(chat.name, prompt_tokens, choices)

    def need_chat() -> ChatModel:
        if chat is None:
            raise RequestError("this server has no causal LM (only /score): start it with a causal LM folder",
                               status=404, code="model_not_found")
        return chat

    @app.post("/v1/completions")
    async def completions(request: Request):
        served = need_chat()
        parsed = parse_completion_request(await body_of(request), served.tokenizer,
                                          vocab_size=served.model.get_output_embeddings().weight.shape[0],
                                          max_tokens_limit=max_new_tokens_limit)
        if parsed.model is not None and parsed.model != served.name:
            raise RequestError(f"model {parsed.model!r} is not served here; this server serves {served.name!r}",
                               "model", status=404, code="model_not_found")

        def run():  # the version is read under the lock that also guards a reload
            return sample(served.model, served.tokenizer, parsed, context=served.context), weights.version

        samples, version = await run_in_threadpool(locked, run)
        return completion_response(served.name, served.tokenizer, parsed, samples, weights_version=version)

    def version_of(value, where: str) -> int | None:
        if value is None:
            return None
        try:
            version = int(value)
        except (TypeError, ValueError):
            raise RequestError(f"version must be an integer, got {value!r}", where) from None
        if isinstance(value, (bool, float)) or version < 0:
            raise RequestError(f"version must be a non-negative integer, got {value!r}", where)
        return version

    @app.post("/reload_weights")
    async def reload_weights(request: Request):
        served = need_chat()
        body = await body_of(request)
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise RequestError('send {"path": folder, "version": k}: path (a string) is required', "path")
        version = version_of(body.get("version"), "version")

        def run():
            tensors, config = read_folder(body["path"])
            return apply_weights(served.model, tensors, config, weights, version=version, source=body["path"])

        return {"version": await run_in_threadpool(locked, run), "source": body["path"]}

    @app.post("/update_weights")
    async def update_weights(request: Request):
        served = need_chat()
        version = version_of(request.query_params.get("version"), "version")
        payload = await request.body()

        def run():
            tensors, config = read_bytes(payload)
            return apply_weights(served.model, tensors, config, weights, version=version, source="http")

        return {"version": await run_in_threadpool(locked, run), "source": "http"}

    @app.get("/weights_version")
    async def weights_version():
        return {"version": weights.version, "source": weights.source}

    @app.post("/score")
    async def score(request: Request):
        if scorer is None:
            raise RequestError("this server has no reward model: start it with --reward-model DIR", status=404,
                               code="model_not_found")
        parsed = parse_score_request(await body_of(request))
        if not parsed.prompts:
            return {"rewards": []}
        mean, std = await run_in_threadpool(locked, scorer.score_with_std, parsed.prompts, parsed.responses)
        return {"rewards": (mean - parsed.ensemble_std_coef * std).tolist()}

    return app
