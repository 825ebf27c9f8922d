"""precision=auto: bf16 only where the hardware runs it natively, with the choice logged."""

import logging

import pytest
import yaml

from rlhfkit.models import precision as P
from rlhfkit.train import run


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "cpu_native_bf16", lambda: False)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "cpu_native_bf16", lambda: True)


def test_auto_is_fp32_on_a_cpu_without_native_bf16_and_says_why(cpu_without_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        assert P.resolve_precision("auto", announce=True) == "fp32"
    assert "precision=auto -> fp32" in caplog.text and "no native bf16" in caplog.text


def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpu_with_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        assert P.resolve_precision("auto", announce=True) == "bf16"
    assert "precision=auto -> bf16" in caplog.text


def test_explicit_bf16_is_honoured_but_warns_where_it_is_emulated(cpu_without_bf16, caplog):
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        assert P.resolve_precision("bf16", announce=True) == "bf16"
    assert any(r.levelno == logging.WARNING and "slower" in r.getMessage() for r in caplog.records)


def test_explicit_choices_need_no_detection_and_unknown_ones_fail(cpu_with_bf16):
    assert P.resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        P.resolve_precision("fp16")


def test_autocast_follows_the_resolution(cpu_without_bf16):
    import torch

    with run.autocast("auto"):
        assert not torch.is_autocast_enabled("cpu")
    with run.autocast("bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_start_run_resolves_auto_and_records_what_ran(cpu_without_bf16, tmp_path):
    from rlhfkit.train.sft import SFTConfig

    config = SFTConfig(model="m", data="d.jsonl", output_dir=str(tmp_path / "run"))
    assert config.precision == "auto"
    run.start_run(config)
    assert config.precision == "fp32"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["precision"] == "fp32"


def test_auto_is_fp32_on_a_gpu_that_only_emulates_bf16(monkeypatch):
    # torch.cuda.is_bf16_supported() counts emulation by default (a V100 or T4 says True): auto must ask
    # for native support only
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(P.torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    monkeypatch.setattr(P.torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert P.resolve_precision("auto") == "fp32"
