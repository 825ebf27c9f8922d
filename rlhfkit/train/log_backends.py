"""Optional metric sinks beside ``metrics.jsonl``: TensorBoard, Weights & Biases, MLflow, Trackio.

``log.backends=[wandb, mlflow, trackio, tensorboard]`` on any stage. None of these packages is a
dependency: a backend whose package is not installed is skipped with one line saying so, and the run
goes on with ``metrics.jsonl`` (which is always written, and is what rlhfkit itself reads back).
Each backend receives the same rows as the JSONL file: numeric values only, at integer steps (the
"final" evaluation rows carry a string step and go to the JSONL file only).

What lives here: :class:`LogConfig` and one small adapter per backend. What does not: the JSONL
logger and the training loops (:mod:`rlhfkit.train.run`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.config import require

BACKENDS = ("tensorboard", "wandb", "mlflow", "trackio")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


@dataclass
class LogConfig:
    """Where metrics go besides ``metrics.jsonl``."""

    backends: list[str] = field(default_factory=list)
    """any of tensorboard, wandb, mlflow, trackio (each used only when its package is installed)"""
    project: str = "rlhfkit"
    """project (wandb, trackio) or experiment (mlflow) name; the run is named after its output folder"""

    def validate(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        require(not unknown, f"log.backends: unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")


class _TensorBoard:
    def __init__(self, out_dir: Path, project: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, out_dir: Path, project: str, config: dict):
        import wandb

        # resume="allow" with the folder's name as id: a resumed run continues the same wandb run
        self.run = wandb.init(project=project, name=out_dir.name, id=_run_id(out_dir), dir=str(out_dir),
                              config=config, resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, out_dir: Path, project: str, config: dict):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(project)
        self.run = mlflow.start_run(run_name=out_dir.name)
        mlflow.log_params({k: str(v)[:500] for k, v in _flat(config).items()})

    def log(self, step: int, values: dict[str, float]) -> None:
        # MLflow metric names allow letters, digits and _ - . / and space: ours already fit
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class _Trackio:
    def __init__(self, out_dir: Path, project: str, config: dict):
        import trackio

        self.trackio = trackio
        trackio.init(project=project, name=out_dir.name, config=config, resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


_ADAPTERS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _MLflow, "trackio": _Trackio}


def _run_id(out_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:16]


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The loggable part of a metrics row: finite-or-not numbers, no step, no strings or lists."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def open_backends(names: list[str], out_dir: str | Path, *, project: str = "rlhfkit",
                  config: dict | None = None) -> list:
    """One adapter per named backend whose package is installed (a missing one is skipped, said once)."""
    out_dir = Path(out_dir)
    opened = []
    for name in dict.fromkeys(names):
        if not installed(_PACKAGE[name]):
            print(f"log.backends: {name} is not installed (pip install {_PACKAGE[name]}); metrics go to "
                  "metrics.jsonl without it")
            continue
        opened.append(_ADAPTERS[name](out_dir, project, config or {}))
    return opened
