"""Rollouts from a generation server: ``ServerGenerator`` speaks OpenAI's completions API with
token-id prompts (``rlhfkit serve``, ``vllm serve``, SGLang) and keeps the server's weights in step
with the policy.

Each ``generate(prompt_ids)``:

1. **sync**: the policy's current weights reach the server (:mod:`.weight_sync`) under the next
   version number. ``generate`` is called once per iteration, before the rollout, so the weights
   after each optimiser update are the weights that sample the next batch; the first call syncs
   too (the server may have been started from another folder);
2. **sample**: the prompts go out in requests of at most ``sampling.batch_size`` sequences,
   ``rollout.concurrency`` in flight at once (a thread each: the HTTP client blocks); runs of
   ``n`` identical prompts (GRPO / RLOO groups) are sent once with ``n``; each request carries a
   seed drawn from the run's seed, so a run is reproducible on the same server;
3. the answers become one :class:`~rlhfkit.rollout.base.Rollout` with the sampler's log-probs.

When the server is down (connection refused, reset, 5xx) the trainer waits: retries with
exponential back-off (``retry_backoff_s`` doubling up to 10 s), logged at each attempt, for at most
``max_wait_s`` in all, then raises. After an outage the weights are synced again before sampling
(a restarted server came back with the weights it was launched on); an rlhfkit server also reports
the version that sampled each answer, and a mismatch (a restart between sync and sample) resyncs
and samples again.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.data.tokenize import pad_batch
from rlhfkit.rollout.base import Rollout, SamplingConfig
from rlhfkit.rollout.weight_sync import payload_bytes, write_hf_folder, write_payload

log = logging.getLogger(__name__)
INSTALL_HINT = "rollout.backend=server needs httpx: pip install 'rlhfkit[rollout]'"


@dataclass
class RolloutConfig:
    """Where rollouts are generated and how the server gets the policy's weights."""

    backend: Literal["hf", "server"] = "hf"
    """hf: in-process transformers generation; server: an OpenAI-compatible completions server (rollout.url)"""
    url: str = ""
    """the server's base URL, e.g. http://127.0.0.1:8000 (without /v1)"""
    server_kind: Literal["rlhfkit", "vllm", "sglang"] = "rlhfkit"
    """which weight-reload routes the server has: rlhfkit serve, vLLM (dev mode) or SGLang"""
    sync: Literal["disk", "http"] = "disk"
    """disk: write safetensors into sync_dir and ask the server to reload; http: stream them (rlhfkit only)"""
    sync_dir: str = ""
    """a folder both trainer and server can read (default: <output_dir>/weight_sync); for vLLM, the folder it serves"""
    tis_cap: float = 0.0
    """truncated importance sampling: weight each token's policy loss by min(π_old/π_sampler, tis_cap)
    (Yao et al. 2025); 0 = off"""
    concurrency: int = 4
    """requests in flight at once"""
    timeout_s: float = 300.0
    """seconds one request may take"""
    max_wait_s: float = 600.0
    """how long the trainer waits for a server that is down before it gives up"""
    retry_backoff_s: float = 0.5
    """first wait between retries (doubles each time, at most 10 s)"""
    served_name: str = ""
    """the model name sent in requests (vLLM / SGLang check it; default: ask /v1/models)"""

    def validate(self) -> None:
        from rlhfkit.config import require

        require(self.backend in ("hf", "server"), f"rollout.backend must be hf or server, got {self.backend!r}")
        require(self.server_kind in ("rlhfkit", "vllm", "sglang"),
                f"rollout.server_kind must be rlhfkit, vllm or sglang, got {self.server_kind!r}")
        require(self.sync in ("disk", "http"), f"rollout.sync must be disk or http, got {self.sync!r}")
        require(self.backend != "server" or self.url.startswith(("http://", "https://")),
                f"rollout.backend=server needs rollout.url (http://host:port), got {self.url!r}")
        require(self.sync == "disk" or self.server_kind == "rlhfkit",
                "rollout.sync=http streams weights to rlhfkit serve only; use rollout.sync=disk for vLLM / SGLang")
        require(self.tis_cap >= 0, f"rollout.tis_cap must be >= 0 (0 = off), got {self.tis_cap}")
        require(self.concurrency >= 1, "rollout.concurrency must be >= 1")
        require(self.max_wait_s >= 0 and self.retry_backoff_s > 0 and self.timeout_s > 0,
                "rollout.max_wait_s must be >= 0, rollout.retry_backoff_s and rollout.timeout_s > 0")


class ServerDown(RuntimeError):
    """The server did not answer (connection refused or reset, timeout, 5xx): worth waiting for."""


class ServerError(RuntimeError):
    """The server answered with a client error (4xx): waiting will not help."""


def group_size(prompt_ids: list[list[int]]) -> int:
    """n such that the prompts are runs of exactly n identical prompts (GRPO's groups), else 1."""
    first = 1
    while first < len(prompt_ids) and prompt_ids[first] == prompt_ids[0]:
        first += 1
    if first == 1 or len(prompt_ids) % first:
        return 1
    blocks = range(0, len(prompt_ids), first)
    return first if all(prompt_ids[i: i + first] == [prompt_ids[i]] * first for i in blocks) else 1


def choice_tokens(choice: dict) -> tuple[list[int], list[float]]:
    """(token ids, log-probs) of one completions choice: ids from ``token_ids`` (rlhfkit, vLLM's
    return_token_ids) or else from ``logprobs.tokens`` as "token_id:N" (vLLM's return_tokens_as_token_ids)."""
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs")
    ids = choice.get("token_ids")
    if ids is None:
        tokens = logprobs.get("tokens") or []
        if not all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            raise ServerError("the server's choice has neither token_ids nor logprobs.tokens as 'token_id:N' "
                              "(send return_tokens_as_token_ids: true to vLLM)")
        ids = [int(t.split(":", 1)[1]) for t in tokens]
    if values is None or len(values) != len(ids):
        raise ServerError(f"the server returned {len(ids)} tokens but "
                          f"{'no' if values is None else len(values)} log-probs")
    return [int(t) for t in ids], [float(v) for v in values]


def to_rollout(prompt_ids: list[list[int]], choices: list[tuple[list[int], list[float]]], *, stop_ids: list[int],
               pad_token_id: int) -> Rollout:
    """Prompts left-padded, responses right-padded and cut after their first stop token (a server
    that returns tokens past it is cut here), log-probs 0 on padding."""
    ids, mask = pad_batch(prompt_ids, pad_token_id, side="left")
    R = max(1, max(len(t) for t, _ in choices))
    response = torch.full((len(choices), R), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(choices), R), dtype=torch.long)
    logprobs = torch.zeros((len(choices), R))
    has_eos = torch.zeros(len(choices), dtype=torch.bool)
    stops = set(stop_ids)
    for row, (tokens, values) in enumerate(choices):
        end = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        has_eos[row] = end <= len(tokens) and any(t in stops for t in tokens[:end])
        response[row, :end] = torch.tensor(tokens[:end], dtype=torch.long)
        response_mask[row, :end] = 1
        logprobs[row, :end] = torch.tensor(values[:end])
    return Rollout(prompt_ids=ids, prompt_mask=mask, response_ids=response, response_mask=response_mask,
                   logprobs=logprobs, has_eos=has_eos)


class ServerGenerator:
    """``generate(prompt_ids) -> Rollout`` through a completions server, syncing ``policy`` first."""

    def __init__(self, policy, tokenizer, sampling: SamplingConfig, rollout: RolloutConfig, *, sync_dir: Path,
                 seed: int = 0):
        try:
            import httpx
        except ImportError as err:
            raise ImportError(INSTALL_HINT) from err
        from rlhfkit.models.loading import stop_token_ids

        self.policy, self.tokenizer, self.sampling, self.config = policy, tokenizer, sampling, rollout
        self.url = rollout.url.rstrip("/")
        self.sync_dir = Path(sync_dir)
        self.stop_ids = stop_token_ids(policy, tokenizer)
        self.client = httpx.Client(timeout=rollout.timeout_s)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per request; failures are ours to log
        self.seeds = torch.Generator().manual_seed(seed + 29)
        self.version = 0
        """the version of the last sync the server accepted (the server reports it too)"""
        self.synced = False
        self.model_name = rollout.served_name or None
        self.last_stats: dict[str, float] = {}
        """rollout/* and time/* figures of the last call, logged with the iteration's metrics"""

    # ------------------------------------------------------------ HTTP with waiting

    def _request(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        try:
            answer = self.client.request(method, self.url + path, **kwargs)
        except httpx.TransportError as err:  # refused, reset, timed out
            raise ServerDown(f"{method} {self.url}{path}: {type(err).__name__}: {err}") from None
        if answer.status_code >= 500:
            raise ServerDown(f"{method} {self.url}{path}: HTTP {answer.status_code}: {answer.text[:300]}")
        if answer.status_code >= 400:
            raise ServerError(f"{method} {self.url}{path}: HTTP {answer.status_code}: {answer.text[:500]}")
        return answer.json() if answer.content else {}

    def _with_waiting(self, work):
        """Run ``work()``; while the server is down, wait with back-off (bounded by max_wait_s) and
        mark the weights unsynced, so the next attempt resyncs before it samples."""
        waited, attempts, delay = 0.0, 0, self.config.retry_backoff_s
        while True:
            try:
                result = work()
                self.last_stats["rollout/server_wait_s"] = waited
                self.last_stats["rollout/retries"] = float(attempts)
                return result
            except ServerDown as err:
                self.synced = False
                if waited >= self.config.max_wait_s:
                    raise ServerDown(f"the rollout server at {self.url} did not come back within "
                                     f"rollout.max_wait_s={self.config.max_wait_s:g} s; last error: {err}") from None
                attempts += 1
                pause = min(delay, 10.0, max(self.config.max_wait_s - waited, 0.0))
                log.warning("rollout server down (%s); retry %d in %.1f s (waited %.1f s of %g)", err, attempts,
                            pause, waited, self.config.max_wait_s)
                time.sleep(pause)
                waited += pause
                delay *= 2

    # ------------------------------------------------------------ weights

    def sync_weights(self) -> int:
        """Send the policy's weights as version ``self.version + 1``; returns the new version. An
        rlhfkit server that already holds a later version (a resumed run) is continued from it."""
        kind, t = self.config.server_kind, time.time()
        if kind == "rlhfkit" and self.version == 0:
            self.version = max(0, int(self._request("GET", "/weights_version").get("version") or 0))
        version = self.version + 1
        if kind == "rlhfkit" and self.config.sync == "http":
            answer = self._request("POST", "/update_weights", params={"version": version},
                                   content=payload_bytes(self.policy),
                                   headers={"content-type": "application/octet-stream"})
        elif kind == "rlhfkit":
            folder = write_payload(self.policy, self.sync_dir / f"v{version:06d}")
            answer = self._request("POST", "/reload_weights", json={"path": str(folder.resolve()), "version": version})
            for old in self.sync_dir.glob("v[0-9]*"):
                if old != folder and old.is_dir():
                    import shutil

                    shutil.rmtree(old, ignore_errors=True)
        elif kind == "vllm":
            write_hf_folder(self.policy, self.tokenizer, self.sync_dir, in_place=True)
            answer = self._request("POST", "/collective_rpc", json={"method": "reload_weights"})
            self._request("POST", "/reset_prefix_cache")
        else:  # sglang
            folder = write_hf_folder(self.policy, self.tokenizer, self.sync_dir / f"v{version:06d}", in_place=False)
            answer = self._request("POST", "/update_weights_from_disk", json={"model_path": str(folder.resolve())})
            if isinstance(answer, dict) and answer.get("success") is False:
                raise ServerError(f"SGLang refused the weights in {folder}: {answer.get('message')}")
        if kind == "rlhfkit" and int(answer.get("version", -1)) != version:
            raise ServerError(f"the server reports weights version {answer.get('version')} after loading {version}")
        self.version, self.synced = version, True
        self.last_stats["time/weight_sync"] = time.time() - t
        return version

    # ------------------------------------------------------------ sampling

    def _body(self, prompts: list[list[int]], n: int) -> dict:
        s = self.sampling
        body = {"prompt": prompts, "n": n, "max_tokens": s.max_new_tokens, "temperature": s.temperature,
                "top_p": s.top_p, "top_k": s.top_k if s.top_k > 0 else -1, "logprobs": 0,
                "return_tokens_as_token_ids": True, "return_token_ids": True,
                "seed": int(torch.randint(0, 2 ** 62, (1,), generator=self.seeds)),
                # vLLM: stop at EOS, keep the EOS id in the output, no extra tokens
                "ignore_eos": False, "skip_special_tokens": False}
        if self.model_name:
            body["model"] = self.model_name
        return body

    def _sample(self, prompt_ids: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        n = group_size(prompt_ids)
        unique = prompt_ids[::n]
        per_request = max(1, self.sampling.batch_size // n)
        chunks = [unique[i: i + per_request] for i in range(0, len(unique), per_request)]
        bodies = [self._body(chunk, n) for chunk in chunks]  # seeds drawn in order, whatever the thread timing
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(bodies))) as pool:
            answers = list(pool.map(lambda body: self._request("POST", "/v1/completions", json=body), bodies))
        choices = []
        for chunk, answer in zip(chunks, answers):
            if self.config.server_kind == "rlhfkit" and answer.get("weights_version") != self.version:
                self.synced = False  # restarted between our sync and this answer: resync and sample again
                raise ServerDown(f"the server sampled with weights version {answer.get('weights_version')}, "
                                 f"not {self.version}")
            got = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
            if len(got) != len(chunk) * n:
                raise ServerError(f"asked {len(chunk)} prompts × n={n}, the server returned {len(got)} choices")
            choices += [choice_tokens(c) for c in got]
        return choices

    def _resolve_model_name(self) -> None:
        if self.model_name is None and self.config.server_kind != "rlhfkit":
            data = self._request("GET", "/v1/models").get("data") or [{}]
            self.model_name = data[0].get("id")

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]]) -> Rollout:
        self.last_stats = {}
        t = time.time()
        synced_now = [False]

        def attempt():
            self._resolve_model_name()
            if not synced_now[0] or not self.synced:
                self.sync_weights()
                synced_now[0] = True
            return self._sample(prompt_ids)

        choices = self._with_waiting(attempt)
        self.last_stats["rollout/weights_version"] = float(self.version)
        self.last_stats["time/server_generate"] = time.time() - t
        return to_rollout(prompt_ids, choices, stop_ids=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id)

    def close(self) -> None:
        self.client.close()
