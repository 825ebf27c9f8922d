"""Where a scalar reward for (prompt, response) comes from, behind one interface.

Every source has ``score(prompts, responses) -> Tensor (N,)`` on response TEXTS (so the reward
model may use another tokenizer than the policy, and HTTP / Python rewards see what a user would)
and ``last_stats``, a dict of floats worth logging from its latest call.

- :class:`RewardModelSource`: a reward model folder or an ensemble folder (``ensemble.json``);
  an ensemble is optimised as mean − λ·std (uncertainty-penalised reward, Coste et al. 2023,
  "Reward Model Ensembles Help Mitigate Overoptimization").
- :class:`HTTPRewardSource`: POST ``{"prompts": [...], "responses": [...]}`` → ``{"rewards": [...]}``,
  with a timeout and retries with back-off.
- :class:`PythonRewardSource`: a function ``f(prompts, responses) -> list[float]`` (TRL's
  reward-function convention, batched), given as a callable or as ``"package.module:function"``.
- :class:`WeightedSum`: Σ_k w_k · source_k, each component logged as ``reward/<name>``.

:class:`RewardSettings` is the config block PPO, GRPO and RLOO share; :func:`build_reward_source`
turns it into one source. Not here: the reward-model folder format and its scoring
(:mod:`rlhfkit.models.reward_model`), training a reward model (:mod:`rlhfkit.train.reward_model`).
"""

from __future__ import annotations

import importlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from rlhfkit.config import ConfigError, require

__all__ = [
    "RewardSource",
    "RewardModelSource",
    "HTTPRewardSource",
    "PythonRewardSource",
    "WeightedSum",
    "RewardSettings",
    "build_reward_source",
    "load_function",
]


class RewardSource(Protocol):
    name: str
    last_stats: dict[str, float]

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        """(N,) float32 rewards, one per (prompt, response)."""
        ...


def _check_lengths(prompts: Sequence, responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


class RewardModelSource:
    """A trained reward model (or ensemble) folder; reward = mean − ``std_coef`` · std over members.

    ``calibrated``: divide the reward by the temperature T stored with the model (fitted on held-out
    pairs, Guo et al. 2017), so that reward differences are the calibrated Bradley–Terry log-odds
    σ⁻¹ P(a ≻ b) that the panel's vote shares support; a KL coefficient then trades nats of KL against
    calibrated log-odds whatever scale the reward model's training left its margins at.
    ``last_stats``: reward/model_mean (before the std penalty) and, for an ensemble,
    reward/ensemble_std (mean disagreement of the members).
    """

    def __init__(self, path: str | Path, *, std_coef: float = 0.0, batch_size: int = 64, device=None,
                 name: str = "reward_model", calibrated: bool = False):
        from rlhfkit.models.reward_model import load_scorer

        self.name, self.std_coef = name, float(std_coef)
        self.scorer = load_scorer(path, batch_size=batch_size)
        self.scale = 1.0 / self.scorer.temperature if calibrated else 1.0
        if device is not None:
            for model in self.scorer.models:
                model.to(device)
        for model in self.scorer.models:
            model.requires_grad_(False)
        self.last_stats: dict[str, float] = {}

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        _check_lengths(prompts, responses)
        mean, std = self.scorer.score_with_std(list(prompts), list(responses))
        mean, std = mean * self.scale, std * self.scale
        self.last_stats = {f"reward/{self.name}_mean": float(mean.mean())}
        if self.scorer.ensemble_size > 1:
            self.last_stats["reward/ensemble_std"] = float(std.mean())
        return (mean - self.std_coef * std).float()


class HTTPRewardSource:
    """A remote reward: POST JSON ``{"prompts": [...], "responses": [...]}`` to ``url``, read
    ``{"rewards": [...]}`` (one number per response). Requests are sent ``batch_size`` pairs at a
    time; a failed request (connection error, timeout, HTTP 5xx) is retried ``retries`` times with
    exponential back-off, then raises RuntimeError naming the URL. HTTP 4xx and malformed answers
    fail at once (retrying would not help)."""

    def __init__(self, url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 batch_size: int = 256, headers: dict[str, str] | None = None, name: str = "http"):
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.batch_size, self.headers, self.name = batch_size, dict(headers or {}), name
        self.last_stats: dict[str, float] = {}

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        _check_lengths(prompts, responses)
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._post(list(prompts[start: start + self.batch_size]),
                                  list(responses[start: start + self.batch_size])))
        return torch.tensor(out, dtype=torch.float32)

    def _post(self, prompts: list, responses: list[str]) -> list[float]:
        body = json.dumps({"prompts": prompts, "responses": responses}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **self.headers})
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    payload = json.loads(answer.read().decode())
                break
            except urllib.error.HTTPError as err:
                if err.code < 500:
                    raise RuntimeError(f"reward endpoint {self.url} answered HTTP {err.code}: {err.reason}") from None
                error = err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                error = err
        else:
            raise RuntimeError(f"reward endpoint {self.url} failed after {self.retries + 1} attempts: {error}")
        rewards = payload.get("rewards") if isinstance(payload, dict) else None
        if not isinstance(rewards, list) or len(rewards) != len(prompts):
            raise RuntimeError(f"reward endpoint {self.url} must answer {{\"rewards\": [{len(prompts)} numbers]}}, "
                               f"got {str(payload)[:200]}")
        return [float(r) for r in rewards]


def load_function(spec: str) -> Callable:
    """``"package.module:function"`` → the function (ConfigError if it cannot be found)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward function {spec!r} must be written 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"reward function {spec!r}: cannot import {module_name}: {err}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"reward function {spec!r}: {module_name} has no attribute {attr}")
    if not callable(fn):
        raise ConfigError(f"reward function {spec!r} is not callable")
    return fn


class PythonRewardSource:
    """A Python reward ``fn(prompts, responses) -> list[float]`` (batched, as TRL's reward functions),
    from a callable or a ``"package.module:function"`` string."""

    def __init__(self, fn: Callable | str, *, name: str | None = None):
        if isinstance(fn, str):
            name = name or fn.rpartition(":")[2]
            fn = load_function(fn)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "python")
        self.last_stats: dict[str, float] = {}

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        _check_lengths(prompts, responses)
        values = self.fn(list(prompts), list(responses))
        out = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        if out.shape != (len(prompts),):
            raise ValueError(f"reward function {self.name} returned {out.numel()} values "
                             f"for {len(prompts)} responses")
        return out


class WeightedSum:
    """Σ_k w_k · score_k over several sources; ``last_stats`` holds each component's batch mean
    (``reward/<name>``) and the components' own stats."""

    def __init__(self, sources: list[RewardSource], weights: list[float] | None = None, *, name: str = "sum"):
        if not sources:
            raise ValueError("WeightedSum needs at least one reward source")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources):
            raise ValueError(f"{len(weights)} reward weights for {len(sources)} reward sources")
        self.sources, self.weights, self.name = sources, weights, name
        self.last_stats: dict[str, float] = {}

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        total = torch.zeros(len(responses))
        stats: dict[str, float] = {}
        for source, weight in zip(self.sources, self.weights):
            scores = source.score(prompts, responses)
            total = total + weight * scores
            stats[f"reward/{source.name}"] = float(scores.mean())
            stats.update(source.last_stats)
        self.last_stats = stats
        return total


@dataclass
class RewardSettings:
    """Where rewards come from: any mix of a reward model, an HTTP endpoint and Python functions."""

    model: str | None = None
    """reward model folder, or an ensemble folder (ensemble.json + members)"""
    ensemble_std_coef: float = 0.0
    """λ in mean − λ·std over ensemble members (uncertainty penalty; 0: the plain mean)"""
    calibrated: bool = False
    """divide the reward model's score by its stored temperature T (calibrated log-odds; T = 1 if none stored)"""
    url: str | None = None
    """HTTP endpoint: POST {"prompts", "responses"} → {"rewards"}"""
    timeout: float = 30.0
    """seconds before an HTTP request is abandoned (then retried)"""
    retries: int = 3
    """retries of a failed HTTP request, with exponential back-off"""
    functions: list[str] = field(default_factory=list)
    """Python rewards 'package.module:function', each f(prompts, responses) -> list[float]"""
    weights: list[float] = field(default_factory=list)
    """weight of each source in the order model, url, functions (empty: all 1)"""
    batch_size: int = 64
    """responses per reward-model forward pass / per HTTP request"""

    def count(self) -> int:
        return int(self.model is not None) + int(self.url is not None) + len(self.functions)

    def validate(self, *, callables: int = 0) -> None:
        n = self.count() + callables
        require(n > 0, "reward: set reward.model, reward.url or reward.functions (at least one reward source)")
        require(not self.weights or len(self.weights) == n,
                f"reward.weights has {len(self.weights)} entries but there are {n} reward sources")
        require(self.ensemble_std_coef >= 0, "reward.ensemble_std_coef must be >= 0")
        require(self.retries >= 0 and self.timeout > 0, "reward.retries must be >= 0 and reward.timeout > 0")


def build_reward_source(settings: RewardSettings, *, extra: Sequence[Callable | RewardSource] = (),
                        device=None) -> RewardSource:
    """One source from the settings (plus ``extra`` callables or sources given in code, e.g. the
    built-in task's gold reward). A single unweighted source is returned as it is."""
    settings.validate(callables=len(extra))
    sources: list[RewardSource] = []
    if settings.model is not None:
        sources.append(RewardModelSource(settings.model, std_coef=settings.ensemble_std_coef,
                                         batch_size=settings.batch_size, device=device,
                                         calibrated=settings.calibrated))
    if settings.url is not None:
        sources.append(HTTPRewardSource(settings.url, timeout=settings.timeout, retries=settings.retries,
                                        batch_size=settings.batch_size))
    sources.extend(PythonRewardSource(spec) for spec in settings.functions)
    sources.extend(s if hasattr(s, "score") else PythonRewardSource(s) for s in extra)
    if len(sources) == 1 and (not settings.weights or settings.weights == [1.0]):
        return sources[0]
    return WeightedSum(sources, settings.weights or None)
