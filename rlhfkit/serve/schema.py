"""Request bodies of ``/v1/chat/completions`` and ``/score``, checked field by field.

We read the JSON ourselves instead of declaring pydantic models: a client that sends a wrong
type must get an OpenAI-style HTTP 400 that names the field (``param``), not FastAPI's 422, and
clients send many fields we do not use (``frequency_penalty``, ``user``, ...), which are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_N = 64


class RequestError(ValueError):
    """A bad request: ``param`` is the offending field, as OpenAI's error body names it."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int(body: dict, key: str, default: int | None, *, low: int, high: int | None = None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if not _is_int(value):
        raise RequestError(f"{key} must be an integer, got {value!r}", key)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise RequestError(f"{key} must be {bounds}, got {value}", key)
    return value


def _number(body: dict, key: str, default: float, *, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if not _is_number(value):
        raise RequestError(f"{key} must be a number, got {value!r}", key)
    if value > high or value < low or (low_open and value == low):
        raise RequestError(f"{key} must be in {'(' if low_open else '['}{low}, {high}], got {value}", key)
    return float(value)


def _text(content, where: str) -> str:
    """Message content: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(f"{where} must be a string (or a list of text parts), got {str(content)[:80]!r}", where)


def parse_messages(messages, where: str = "messages") -> list[dict]:
    """A non-empty list of {role, content}; roles are system, user and assistant."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"{where} must be a non-empty list of {{role, content}} objects", where)
    out = []
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{at} must be an object with role and content", at)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{at}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{at}.role")
        if "content" not in message:
            raise RequestError(f"{at} has no content", f"{at}.content")
        out.append({"role": role, "content": _text(message["content"], f"{at}.content")})
    return out


@dataclass
class ChatRequest:
    """What one chat completion asks for, with OpenAI's defaults filled in."""

    messages: list[dict]
    model: str | None = None
    max_tokens: int = 256
    """new tokens per choice, already capped by the server's limit"""
    temperature: float = 1.0
    """0 = greedy decoding"""
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0


def parse_chat_request(body, *, max_tokens_limit: int) -> ChatRequest:
    """Validate a /v1/chat/completions body (RequestError naming the field when it is wrong)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if "messages" not in body:
        raise RequestError("messages is required", "messages")
    if body.get("stream"):
        raise RequestError("streaming is not supported by rlhfkit serve; send stream: false", "stream")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"model must be a string, got {model!r}", "model")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, key, 256, low=1)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a non-empty string or a list of non-empty strings", "stop")
    logprobs = body.get("logprobs", False)
    if logprobs is None:
        logprobs = False
    if not isinstance(logprobs, bool):
        raise RequestError(f"logprobs must be true or false, got {logprobs!r}", "logprobs")
    top_logprobs = _int(body, "top_logprobs", 0, low=0, high=MAX_TOP_LOGPROBS)
    if top_logprobs and not logprobs:
        raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
    return ChatRequest(
        messages=parse_messages(body["messages"]), model=model,
        max_tokens=min(max_tokens, max_tokens_limit),
        temperature=_number(body, "temperature", 1.0, low=0.0, high=2.0),
        top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True),
        n=_int(body, "n", 1, low=1, high=MAX_N), seed=_int(body, "seed", None, low=0, high=2 ** 63 - 1),
        stop=stop, logprobs=logprobs, top_logprobs=top_logprobs)


@dataclass
class ScoreRequest:
    prompts: list
    """each a string or a list of chat messages"""
    responses: list[str]
    ensemble_std_coef: float = 0.0


def parse_score_request(body) -> ScoreRequest:
    """Validate a /score body: what :class:`rlhfkit.train.rl.reward_sources.HTTPRewardSource` sends."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for key in ("prompts", "responses"):
        if not isinstance(body.get(key), list):
            raise RequestError(f"{key} is required: a list", key)
    prompts = [p if isinstance(p, str) else parse_messages(p, f"prompts[{i}]") for i, p in enumerate(body["prompts"])]
    responses = body["responses"]
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise RequestError(f"responses[{i}] must be a string, got {str(r)[:80]!r}", f"responses[{i}]")
    if len(prompts) != len(responses):
        raise RequestError(f"{len(prompts)} prompts but {len(responses)} responses: one response per prompt",
                           "responses")
    coef = _number(body, "ensemble_std_coef", 0.0, low=0.0, high=float("inf"))
    return ScoreRequest(prompts=prompts, responses=responses, ensemble_std_coef=coef)
