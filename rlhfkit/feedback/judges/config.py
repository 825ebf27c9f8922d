"""``JudgeConfig``: which judge to build, for ``rlhfkit judge``, ``rlhfkit constitution`` and code."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.config import require
from rlhfkit.feedback.judges.base import DEFAULT_CRITERION
from rlhfkit.models.precision import PRECISIONS

JUDGE_KINDS = ("local", "http", "reward", "python")


@dataclass
class JudgeConfig:
    """A judge: a local causal LM, an OpenAI-compatible server, a reward model or a Python function."""

    kind: str = "local"
    """local (a causal LM folder), http (an OpenAI-compatible chat-completions server), reward (a reward model: σ(r_a − r_b)) or python (a function)"""
    model: str | None = None
    """local: the judge model folder; reward: the reward model (or ensemble) folder; http: the model name sent to the server"""
    url: str | None = None
    """http: the server's base URL, e.g. http://127.0.0.1:8000/v1 (…/chat/completions is appended)"""
    api_key_env: str = "OPENAI_API_KEY"
    """http: the environment variable holding the API key (sent as a Bearer token when set)"""
    function: str | None = None
    """python: 'package.module:function', f(prompt, a, b) -> P(a better) (it may also take criterion=)"""
    template: str | None = None
    """a text file with the judge prompt (placeholders {criterion} {prompt} {question} {a} {b}); default: the built-in template"""
    choices: list[str] = field(default_factory=lambda: ["A", "B"])
    """the two answers the judge chooses between, verbatim as they follow the judge prompt"""
    criterion: str = DEFAULT_CRITERION
    """the question put to the judge (a constitution's comparison principles replace it)"""
    both_orders: bool = True
    """show each pair in both orders and average (cancels position bias; measures it)"""
    cot: bool = False
    """chain of thought: the judge writes a rationale first, then the verdict is read"""
    cot_max_new_tokens: int = 128
    """longest rationale, in tokens"""
    cot_instruction: str | None = None
    """chain of thought: the request for reasoning appended to the judge prompt (None: the built-in one)"""
    verdict_prefix: str | None = None
    """chain of thought: written after the reasoning, before the verdict is read (None: the built-in one)"""
    batch_size: int = 16
    """judge prompts per forward pass (local, reward)"""
    max_length: int = 1024
    """longest judge prompt in tokens (local); longer ones are an error naming the comparison"""
    precision: str = "auto"
    """local: fp32, bf16 (autocast) or auto (bf16 where the hardware runs it natively)"""
    timeout: float = 60.0
    """http: seconds before a request is abandoned (then retried)"""
    retries: int = 4
    """http: retries of a failed request (connection error, timeout, HTTP 429 / 5xx), with exponential back-off"""
    backoff: float = 1.0
    """http: first back-off in seconds (doubled after each failure)"""
    concurrency: int = 8
    """http: requests in flight at once"""
    cache: str | None = None
    """http: a cache file; a verdict already in it is never requested again (after a crash or on a rerun)"""

    def validate(self) -> None:
        require(self.kind in JUDGE_KINDS, f"judge.kind must be one of {list(JUDGE_KINDS)}, got {self.kind!r}")
        if self.kind in ("local", "reward"):
            require(self.model is not None, f"judge.model: a {self.kind} judge needs a model folder")
        if self.kind == "http":
            require(self.url is not None, "judge.url: an http judge needs the server's base URL")
            require(self.model is not None, "judge.model: an http judge needs the model name to send")
        if self.kind == "python":
            require(self.function is not None, "judge.function: a python judge needs 'package.module:function'")
        require(len(self.choices) == 2 and self.choices[0] != self.choices[1],
                f"judge.choices must be two different answers, got {self.choices}")
        require(self.precision in PRECISIONS, f"judge.precision must be one of {', '.join(PRECISIONS)}")
        require(self.batch_size >= 1 and self.concurrency >= 1, "judge.batch_size and judge.concurrency must be >= 1")
        require(self.retries >= 0 and self.timeout > 0 and self.backoff >= 0,
                "judge.retries and judge.backoff must be >= 0, judge.timeout > 0")
