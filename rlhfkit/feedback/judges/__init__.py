"""AI judges: ``compare(prompt, a, b) -> P(a better)`` from a local LM, an OpenAI-compatible server,
a reward model or a Python function; :func:`build_judge` makes one from a :class:`JudgeConfig`."""

from __future__ import annotations

from pathlib import Path

from rlhfkit.config import ConfigError
from rlhfkit.feedback.judges.base import (DEFAULT_CRITERION, DEFAULT_TEMPLATE, BothOrdersJudge, Judge,
                                          JudgeTemplate, Verdict, average_orders, check_batch,
                                          conversation_text, last_user_text, position_bias,
                                          two_choice_probability)
from rlhfkit.feedback.judges.config import JUDGE_KINDS, JudgeConfig
from rlhfkit.feedback.judges.http import HTTPJudge
from rlhfkit.feedback.judges.local import LocalLMJudge
from rlhfkit.feedback.judges.simple import PythonJudge, RewardModelJudge

__all__ = [
    "Judge", "BothOrdersJudge", "Verdict", "JudgeTemplate", "JudgeConfig", "JUDGE_KINDS",
    "DEFAULT_CRITERION", "DEFAULT_TEMPLATE", "LocalLMJudge", "HTTPJudge", "RewardModelJudge", "PythonJudge",
    "build_judge", "load_template", "two_choice_probability", "average_orders", "position_bias",
    "conversation_text", "last_user_text", "check_batch",
]

PLACEHOLDERS = ("criterion", "prompt", "question", "a", "b")


def load_template(config: JudgeConfig) -> JudgeTemplate:
    """The judge template of a config: the text of ``config.template`` (or the built-in one) and
    ``config.choices``. An unreadable file or an unknown placeholder is a ConfigError naming it."""
    text = DEFAULT_TEMPLATE
    if config.template is not None:
        try:
            text = Path(config.template).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"judge.template: cannot read {config.template}: {err}") from None
    try:
        text.format(**{name: "" for name in PLACEHOLDERS})
    except (KeyError, IndexError, ValueError) as err:
        names = " ".join("{" + p + "}" for p in PLACEHOLDERS)
        raise ConfigError(f"judge.template {config.template or '(built-in)'}: bad placeholder {err}; "
                          f"use {names} (write {{{{ and }}}} for literal braces)") from None
    extra = {k: getattr(config, k) for k in ("cot_instruction", "verdict_prefix") if getattr(config, k) is not None}
    return JudgeTemplate(text=text, choices=(config.choices[0], config.choices[1]), **extra)


def build_judge(config: JudgeConfig) -> Judge:
    """The judge a validated :class:`JudgeConfig` describes."""
    config.validate()
    if config.kind == "reward":
        return RewardModelJudge(config.model, batch_size=config.batch_size)
    if config.kind == "python":
        return PythonJudge(config.function, criterion=config.criterion)
    template = load_template(config)
    if config.kind == "http":
        return HTTPJudge(config.url, config.model, template=template, criterion=config.criterion,
                         both_orders=config.both_orders, cot=config.cot, cot_max_new_tokens=config.cot_max_new_tokens,
                         api_key_env=config.api_key_env, timeout=config.timeout, retries=config.retries,
                         backoff=config.backoff, concurrency=config.concurrency, cache=config.cache)
    return LocalLMJudge(config.model, template=template, criterion=config.criterion, both_orders=config.both_orders,
                        cot=config.cot, cot_max_new_tokens=config.cot_max_new_tokens, batch_size=config.batch_size,
                        max_length=config.max_length, precision=config.precision)
