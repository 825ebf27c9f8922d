"""log.backends: each installed backend gets the rows metrics.jsonl gets (numbers, integer steps);
a backend that is not installed is skipped with a message; an unknown one is a config error."""

import importlib.machinery
import json
import sys
import types

import pytest

from rlhfkit.config import ConfigError
from rlhfkit.train.log_backends import LogConfig, numeric
from rlhfkit.train.sft import OptimConfig, SFTConfig, run_sft

RECORDS = [{"prompt": f"User: what color is the {n}?\nAssistant:", "completion": f" the {n} is {c}."}
           for n, c in [("dax", "red"), ("wug", "blue")]] * 8


class FakeWandbRun:
    def __init__(self, **kwargs):
        self.init_kwargs, self.rows, self.finished = kwargs, [], False

    def log(self, values, step):
        self.rows.append((step, dict(values)))

    def finish(self):
        self.finished = True


def fake_module(name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def test_numeric_keeps_numbers_only():
    row = {"step": 3, "train/loss": 1.5, "n": 2, "flag": True, "name": "x", "list": [1]}
    assert numeric(row) == {"train/loss": 1.5, "n": 2.0}


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backend.*neptune"):
        LogConfig(backends=["wandb", "neptune"]).validate()


def test_wandb_gets_every_logged_row_and_a_missing_backend_is_skipped(tiny_model_dir, tmp_path, monkeypatch, capsys):
    runs = []

    def init(**kwargs):
        runs.append(FakeWandbRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", fake_module("wandb", init=init))
    monkeypatch.setattr("rlhfkit.train.log_backends.installed", lambda package: package != "mlflow")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "run"
    run_sft(SFTConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(out), batch_size=4, max_length=64,
                      optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.0), eval_fraction=0.0, log_every=1,
                      save_every=0, eval_every=0, progress=False, max_steps=3, seed=0,
                      log=LogConfig(backends=["wandb", "mlflow"], project="unit")))
    assert "mlflow is not installed" in capsys.readouterr().out
    (run,) = runs
    assert run.init_kwargs["project"] == "unit" and run.init_kwargs["name"] == "run" and run.finished
    assert run.init_kwargs["config"]["max_steps"] == 3  # the run's config goes along
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [(r["step"], numeric(r)) for r in jsonl if isinstance(r["step"], int) and numeric(r)]
    assert run.rows == expected and any("train/loss" in values for _, values in run.rows)
