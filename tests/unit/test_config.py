from dataclasses import dataclass, field
from typing import Literal

import pytest

from rlhfkit.config import ConfigError, describe, field_docs, load_config


@dataclass
class Inner:
    rate: float = 0.1
    """the inner rate"""


@dataclass
class Cfg:
    steps: int = 10
    """number of steps"""
    name: str = "x"
    """a name"""
    mode: Literal["a", "b"] = "a"
    """one of two modes"""
    target: float | None = None
    """optional target"""
    flag: bool = False
    """a switch"""
    items: list[str] = field(default_factory=list)
    """some items"""
    inner: Inner = field(default_factory=Inner)
    """nested section"""


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\ninner:\n  rate: 0.5\n")
    cfg = load_config(Cfg, path, ["inner.rate=0.25", "flag=true", "target=none", "items=a,b", "mode=b"])
    assert cfg.steps == 5 and cfg.inner.rate == 0.25 and cfg.flag is True
    assert cfg.target is None and cfg.items == ["a", "b"] and cfg.mode == "b"
    assert load_config(Cfg, None, ["target=0.3"]).target == 0.3


@pytest.mark.parametrize("override, message", [
    (["stepz=3"], "unknown config key 'stepz'"),
    (["inner.rat=3"], "unknown config key 'inner.rat'"),
    (["steps=abc"], "steps: expected an integer"),
    (["steps=1.5"], "steps: expected an integer"),
    (["flag=maybe"], "flag: expected true/false"),
    (["mode=c"], "mode: 'c' is not one of"),
    (["inner.rate=fast"], "inner.rate"),
    (["noequals"], "not of the form key=value"),
])
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, None, override)


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(Cfg, path)


def test_help_shows_field_docs():
    assert field_docs(Cfg)["steps"] == "number of steps"
    text = describe(Cfg)
    assert "inner.rate" in text and "the inner rate" in text and "one of two modes" in text


def test_help_shows_the_nested_default_the_owner_builds():
    # the nested class says 0.5, the owning field's factory builds 0.25: help must show what a run gets
    @dataclass
    class Nested:
        rate: float = 0.5

    @dataclass
    class Owner:
        inner: Nested = field(default_factory=lambda: Nested(rate=0.25))

    assert "inner.rate (float, default 0.25)" in describe(Owner)


@pytest.mark.parametrize("max_prompt_length", [128, 200, 0])
def test_max_prompt_length_must_leave_room_for_the_completion(max_prompt_length):
    # truncation keeps max_prompt_length prompt tokens and fills max_length with the completion:
    # room 128 − 128 = 0 would give an empty completion, 128 − 200 < 0 would keep too many tokens
    from rlhfkit.train.direct.dpo import DPOConfig

    config = DPOConfig(model="m", data="d.jsonl", max_length=128, max_prompt_length=max_prompt_length)
    with pytest.raises(ConfigError, match=rf"max_prompt_length \({max_prompt_length}\) must be positive and below max_length \(128\)"):
        config.validate()
    DPOConfig(model="m", data="d.jsonl", max_length=128, max_prompt_length=127).validate()


@dataclass
class Budget:
    max_steps: int = 300
    """steps"""
    learning_rate: float = 3e-3
    """rate"""


@dataclass
class Owner:
    reward: Budget = field(default_factory=lambda: Budget(max_steps=1500, learning_rate=1e-3))
    """a section whose default the owner builds"""


def test_a_partial_section_override_keeps_the_owners_default_for_the_other_keys(tmp_path):
    # regression: `reward.max_steps=500` used to rebuild Budget from its class defaults, so the
    # owner's learning rate 1e-3 silently became Budget's 3e-3
    config = load_config(Owner, overrides=["reward.max_steps=500"])
    assert (config.reward.max_steps, config.reward.learning_rate) == (500, 1e-3)
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  learning_rate: 0.002\n")
    config = load_config(Owner, path)
    assert (config.reward.max_steps, config.reward.learning_rate) == (1500, 2e-3)
    assert load_config(Owner).reward == Budget(max_steps=1500, learning_rate=1e-3)


def test_a_stage_option_does_not_reset_the_stages_learning_rate():
    # the same bug on a real stage: `rlhfkit dpo optim.warmup_ratio=0` trained at OptimConfig's class
    # default learning rate instead of DPO's 1e-6
    from rlhfkit.train.direct.preference import PreferenceConfig

    config = load_config(PreferenceConfig, overrides=["model=m", "data=d.jsonl", "optim.warmup_ratio=0"])
    assert (config.optim.learning_rate, config.optim.warmup_ratio) == (1e-6, 0.0)
