"""A judge behind any OpenAI-compatible chat-completions server (vLLM, llama.cpp, Ollama, hosted APIs).

The verdict is read as the local judge reads it, from the log-probabilities of the answer tokens
(the soft labels of RLAIF, Lee et al. 2023, sec. 2.1): the request asks for one token with its 20
most likely alternatives, and P(first) = p₁ / (p₁ + p₂), where pₖ sums the probabilities of the
tokens that equal choice k once stripped ("A" and " A"). A server that returns no log-probs, or
none for either choice, is read from the answer's text instead: the first standalone choice gives
1 or 0, no choice 0.5 (Zheng et al. 2023 parse the verdict the same way); ``stats`` counts both.
Pairs are shown in both orders and averaged (position bias, Lee et al. 2023, sec. 3.1).

Requests run ``concurrency`` at a time; connection errors, timeouts, HTTP 429 and 5xx are retried
with exponential back-off, other 4xx fail at once. With ``cache`` every answer is written to a
SQLite file the moment it arrives, keyed by a hash of the request (never of the API key), so a
rerun, or a run resumed after a crash, asks nothing twice.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Sequence

from rlhfkit.feedback.judges.base import DEFAULT_CRITERION, BothOrdersJudge, JudgeTemplate, Prompt

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20
"""alternatives asked for with the first token (the most the OpenAI API allows)"""


def choice_probability(top_logprobs: Sequence[dict], choices: Sequence[str]) -> float | None:
    """P(first choice) from one token's ``[{"token", "logprob"}, ...]``: the probability mass of the
    tokens equal to each choice after ``.strip()``, renormalised over the two. A choice missing from
    the list gets the smallest listed probability (an upper bound on its own). None when neither
    choice is listed."""
    wanted = [c.strip() for c in choices]
    mass = [0.0, 0.0]
    for entry in top_logprobs:
        token = str(entry.get("token", "")).strip()
        for k in (0, 1):
            if token == wanted[k]:
                mass[k] += math.exp(float(entry["logprob"]))
    if mass == [0.0, 0.0]:
        return None
    floor = min(math.exp(float(e["logprob"])) for e in top_logprobs)
    first, second = (m if m > 0 else floor for m in mass)
    return first / (first + second)


def parse_choice(text: str, choices: Sequence[str], *, last: bool = False) -> float | None:
    """1.0 or 0.0 when the first (or ``last``) standalone choice in ``text`` is the first or the
    second choice; None when neither appears."""
    wanted = [c.strip() for c in choices]
    pattern = r"(?<!\w)(" + "|".join(re.escape(c) for c in wanted) + r")(?!\w)"
    found = re.findall(pattern, text)
    if not found:
        return None
    return 1.0 if (found[-1] if last else found[0]) == wanted[0] else 0.0


class AnswerCache:
    """Request hash → server answer, in SQLite: one row committed per answer, safe across threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
            self._db.commit()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, answer: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers (key, answer) VALUES (?, ?)", (key, json.dumps(answer)))
            self._db.commit()


class HTTPJudge(BothOrdersJudge):
    """A pairwise judge that asks an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(self, base_url: str, model: str, *, template: JudgeTemplate = JudgeTemplate(),
                 criterion: str = DEFAULT_CRITERION, both_orders: bool = True, cot: bool = False,
                 cot_max_new_tokens: int = 512, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0, concurrency: int = 8, cache: str | None = None,
                 temperature: float = 0.0, name: str | None = None, log_every: int = 100):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.template, self.criterion, self.both_orders = model, template, criterion, both_orders
        self.cot, self.cot_max_new_tokens, self.api_key_env = cot, cot_max_new_tokens, api_key_env
        self.timeout, self.retries, self.backoff, self.concurrency = timeout, retries, backoff, concurrency
        self.temperature, self.name, self.log_every = temperature, name or f"http:{model}", log_every
        self.cache = AnswerCache(cache) if cache else None
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "parse_fallbacks": 0, "unparseable": 0}
        self._stats_lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def request_body(self, message: str) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": message}],
                "max_tokens": self.cot_max_new_tokens if self.cot else 1, "temperature": self.temperature,
                "logprobs": True, "top_logprobs": TOP_LOGPROBS}

    def cache_key(self, body: dict) -> str:
        return hashlib.sha256(json.dumps({"url": self.url, **body}, sort_keys=True).encode()).hexdigest()

    # ------------------------------------------------------------ judging

    def judge_shown(self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str], *,
                    criterion: str, comparison: Sequence[int]) -> list[tuple[float, str | None]]:
        bodies = [self.request_body(self.template.message(p, x, y, criterion, cot=self.cot))
                  for p, x, y in zip(prompts, first, second)]
        keys = [self.cache_key(b) for b in bodies]
        answers: dict[str, dict] = {}
        todo: dict[str, dict] = {}
        for key, body in zip(keys, bodies):
            if key in answers or key in todo:
                continue
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                answers[key] = cached
                self._count("cache_hits")
            else:
                todo[key] = body
        if todo:
            answers.update(self._fetch_all(todo))
        return [self.read_verdict(answers[key]) for key in keys]

    def _fetch_all(self, todo: dict[str, dict]) -> dict[str, dict]:
        """Every request of ``todo``, ``concurrency`` at a time; each answer is cached on arrival."""
        out: dict[str, dict] = {}
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo)))
        try:
            futures = {pool.submit(self._fetch_and_keep, key, body): key for key, body in todo.items()}
            for done, future in enumerate(as_completed(futures), start=1):
                out[futures[future]] = future.result()
                if done % self.log_every == 0:
                    log.info("judge %s: %d/%d answers", self.name, done, len(todo))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # requests in flight still reach the cache
            raise
        pool.shutdown(wait=True)
        return out

    def _fetch_and_keep(self, key: str, body: dict) -> dict:
        answer = self._fetch(body)
        if self.cache is not None:
            self.cache.put(key, answer)  # at once: a crash later in the batch loses nothing paid for
        return answer

    def _fetch(self, body: dict) -> dict:
        """POST one request; return the server's first choice (message and log-probs)."""
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers=headers)
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self._count("requests")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    raw = answer.read().decode("utf-8", errors="replace")
                break
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    raise RuntimeError(f"judge server {self.url} answered HTTP {err.code}: "
                                       f"{_server_message(err)}") from None
                error = err
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
                error = err
        else:
            raise RuntimeError(f"judge server {self.url} failed after {self.retries + 1} attempts: {error}")
        try:
            choice = json.loads(raw)["choices"][0]
            return {"text": choice["message"].get("content") or "", "logprobs": choice.get("logprobs")}
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise RuntimeError(f"judge server {self.url} did not answer in the chat-completions format: "
                               f"{raw[:300]!r}") from None

    # ------------------------------------------------------------ reading the answer

    def read_verdict(self, answer: dict) -> tuple[float, str | None]:
        """(P(first shown wins), rationale) from a cached or fresh answer."""
        tokens = _token_logprobs(answer.get("logprobs"))
        text = answer.get("text", "")
        marker = self.template.verdict_prefix.strip()
        rationale = None
        at = 0  # the token that holds the verdict
        if self.cot:
            cut = text.rfind(marker) if marker else -1
            rationale = (text[:cut] if cut >= 0 else text).strip()
            at = _token_after(tokens, marker)
        prob = choice_probability(tokens[at][1], self.template.choices) if at is not None and at < len(tokens) else None
        if prob is not None:
            return prob, rationale
        self._count("parse_fallbacks")
        if self.cot:
            cut = text.rfind(marker) if marker else -1
            prob = parse_choice(text[cut + len(marker):], self.template.choices) if cut >= 0 else \
                parse_choice(text, self.template.choices, last=True)
        else:
            prob = parse_choice(text, self.template.choices)
        if prob is None:
            self._count("unparseable")
            log.warning("judge %s: no verdict in the answer %r; counted as a tie", self.name, text[:100])
            prob = 0.5
        return prob, rationale


def _token_logprobs(logprobs) -> list[tuple[str, list[dict]]]:
    """[(token, top_logprobs)] from the chat format (``content: [{token, top_logprobs}]``) or the
    legacy completions format (``tokens`` and ``top_logprobs: [{token: logprob}]``)."""
    if not isinstance(logprobs, dict):
        return []
    if isinstance(logprobs.get("content"), list):
        return [(str(t.get("token", "")), list(t.get("top_logprobs") or [])) for t in logprobs["content"]]
    tokens, tops = logprobs.get("tokens") or [], logprobs.get("top_logprobs") or []
    return [(tok, [{"token": k, "logprob": v} for k, v in (top or {}).items()]) for tok, top in zip(tokens, tops)]


def _token_after(tokens: list[tuple[str, list[dict]]], marker: str) -> int | None:
    """Index of the first non-blank token after the last occurrence of ``marker`` in the text."""
    text, found = "", None
    for k, (token, _) in enumerate(tokens):
        if marker and text.rstrip().endswith(marker) and token.strip():
            found = k
        text += token
    return found


def _server_message(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read().decode("utf-8", errors="replace")
    except OSError:
        return str(err.reason)
    try:
        payload = json.loads(raw)
        message = payload.get("error", payload) if isinstance(payload, dict) else payload
        if isinstance(message, dict):
            message = message.get("message", message)
        return str(message)[:300]
    except json.JSONDecodeError:
        return raw[:300] or str(err.reason)
