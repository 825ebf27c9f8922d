"""What every training stage shares: the config base and the run around a loop.

- :class:`RunConfig`, the fields every stage's config extends (model, output_dir, seed, precision,
  lora, optim, dropout, logging, checkpoints);
- run set-up (:func:`start_run`: folder, ``config.yaml``, seeds), precision (:func:`autocast`,
  :func:`make_accelerator`);
- resumable, length-grouped index batches (:func:`infinite_batches`);
- :class:`Run`: a run folder while a loop trains: its position, ``metrics.jsonl``
  (:class:`MetricsLogger`), the progress bar and the checkpoints.

Checkpoints hold everything a resumed run needs to continue exactly where it stopped: model
weights, optimizer and scheduler state, RNG states (python, torch) and the loop's own position
(step, epoch, batch within the epoch). ``N steps, stop, resume N steps`` equals ``2N steps``
uninterrupted (tests/stages/test_sft.py and test_preference_trainer.py check it; with 2 processes,
tests/distributed/test_data_parallel.py). With several processes only the main one writes the run
folder, and a checkpoint also keeps every rank's RNG state (:func:`process_index`, :func:`process_count`).

Not here: the optimiser and its schedule (:mod:`rlhfkit.train.optim`), the loops themselves
(:mod:`rlhfkit.train.supervised`, :mod:`rlhfkit.train.rl`) and the fields only one kind of stage has
(:class:`rlhfkit.train.supervised.SupervisedConfig`, :class:`rlhfkit.train.rl.run.RLConfig`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from rlhfkit.config import save_config
from rlhfkit.train.log_backends import LogConfig, numeric, open_backends
from rlhfkit.models.loading import LoraSettings
from rlhfkit.models.precision import Precision, resolve_precision
from rlhfkit.train.optim import OptimConfig


# ---------------------------------------------------------------- configs


@dataclass
class RunConfig:
    """Fields every training stage has. A stage's config extends it (through
    :class:`~rlhfkit.train.supervised.SupervisedConfig` or :class:`~rlhfkit.train.rl.run.RLConfig`)
    and may redeclare a field to change its default (with its own docstring, which ``--help`` then shows)."""

    model: str = ""
    """model folder (or hub name when online) to start from"""
    output_dir: str = "runs/train"
    """where config.yaml, metrics.jsonl, checkpoints/ and final/ are written"""
    seed: int = 0
    """seed of initialisation, data (or prompt) order, sampling and the held-out split"""
    precision: Precision = "auto"
    """auto (bf16 where the hardware runs it natively, else fp32; the choice is logged), bf16 autocast, or fp32"""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings; lora.r = 0 trains all weights. Where a stage has a reference policy (DPO, KTO, PPO, GRPO,
    RLOO), with LoRA it is the same model with its adapter disabled"""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """optimiser and learning-rate schedule"""
    disable_dropout: bool = True
    """switch off every dropout layer of the trained models (TRL's default for DPO, reward models and PPO;
    Huang et al. 2024): a loss that compares the model with a reference, two responses, or the rollout's
    log-probs (first PPO ratio exactly 1) is then not dropout noise"""
    tensorboard: bool = False
    """also write TensorBoard event files (same as adding tensorboard to log.backends)"""
    log: LogConfig = field(default_factory=LogConfig)
    """metric sinks beside metrics.jsonl: log.backends=[wandb, mlflow, trackio, tensorboard], each used when installed"""
    progress: bool = True
    """show a progress bar / periodic progress lines"""
    save_every: int = 200
    """optimiser steps between checkpoints (0: only at the end)"""
    keep_checkpoints: int = 2
    """how many of the newest checkpoints to keep"""
    gradient_checkpointing: bool = False
    """recompute each decoder layer's activations in the backward pass instead of keeping them: activation
    memory falls from O(layers) to O(1) layers for about a third more compute (Chen et al. 2016)"""


# ---------------------------------------------------------------- set-up


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def start_run(config: RunConfig) -> Path:
    """Create the run folder, write the resolved ``config.yaml`` into it and seed the RNGs.

    ``precision=auto`` is resolved here, once per stage, with one log line saying what was chosen
    and why; config.yaml records the precision that ran."""
    config.precision = resolve_precision(config.precision, announce=True)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if process_index() == 0:  # with several processes (accelerate launch, torchrun) the main one writes
        save_config(config, out_dir / "config.yaml")
    set_seed(config.seed)
    return out_dir


def process_index() -> int:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (0 when alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    return partial_state().process_index


def partial_state():
    """accelerate's process-wide distributed state. Under ``torchrun`` on a machine without an
    accelerator, accelerate only sets up its gloo process group when told to run on CPU
    (``accelerate launch --cpu`` tells it through ACCELERATE_USE_CPU); this tells it the same."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu_only())


def _cpu_only() -> bool:
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    probe = getattr(torch, "accelerator", None)
    has_device = probe.is_available() if probe is not None else torch.cuda.is_available()
    return process_count() > 1 and not has_device


def process_count() -> int:
    """How many data-parallel processes train together (1 when alone)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def enable_gradient_checkpointing(model, enabled: bool) -> None:
    """Gradient checkpointing of a Hugging Face model (LoRA-wrapped or not) when ``enabled``; the
    non-reentrant variant, which works with frozen embeddings (LoRA) and with DDP / FSDP."""
    if not enabled:
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def autocast(precision: str):
    """bf16 autocast on CPU or GPU when asked (or when ``auto`` resolves to it); a no-op context otherwise."""
    if resolve_precision(precision) == "bf16":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_accelerator(precision: str):
    """An ``accelerate.Accelerator`` for this stage's precision.

    accelerate keeps one process-wide state and refuses a second Accelerator with another mixed
    precision; the demo runs stages of different precision in one process, so a stale state of
    another precision is cleared first (the distributed setup, PartialState, is kept).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "bf16" if resolve_precision(precision) == "bf16" else "no"
    if AcceleratorState._shared_state and str(AcceleratorState().mixed_precision) != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)
    if process_count() > 1:  # several processes: the gloo group on a machine without GPUs
        return Accelerator(mixed_precision=mixed, cpu=_cpu_only())
    return Accelerator(mixed_precision=mixed)


# ---------------------------------------------------------------- batches


def epoch_batches(lengths: list[int], *, batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, drop_last: bool = False, shuffle: bool = True) -> list[list[int]]:
    """Index batches for one epoch, deterministic in (seed, epoch).

    With ``group_by_length`` examples are shuffled, cut into chunks of 50 batches, sorted by length
    inside a chunk and then the batches are shuffled: batches hold similar lengths, so little compute
    is spent on padding, while the order stays random. ``shuffle=False``: the items in their order,
    every epoch (no length grouping), e.g. to feed another trainer's exact order.
    """
    if not shuffle:
        batches = [list(range(i, min(i + batch_size, len(lengths)))) for i in range(0, len(lengths), batch_size)]
        return batches[:-1] if drop_last and batches and len(batches[-1]) < batch_size else batches
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if group_by_length:
        chunk = batch_size * 50
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s: s + chunk], key=lambda k: lengths[k])]
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    shuffle = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in shuffle]


def infinite_batches(lengths: list[int], *, batch_size: int, seed: int, start_epoch: int = 0,
                     start_batch: int = 0, group_by_length: bool = True, drop_last: bool = False,
                     shuffle: bool = True) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, batch index within the epoch, indices) forever, resumable at any position."""
    if drop_last and len(lengths) < batch_size:
        raise ValueError(f"{len(lengths)} items cannot fill one batch of {batch_size} (drop_last)")
    epoch, first = start_epoch, start_batch
    while True:
        batches = epoch_batches(lengths, batch_size=batch_size, seed=seed, epoch=epoch,
                                group_by_length=group_by_length, drop_last=drop_last, shuffle=shuffle)
        for b in range(first, len(batches)):
            yield epoch, b, batches[b]
        epoch, first = epoch + 1, 0


# ---------------------------------------------------------------- metrics and progress


class MetricsLogger:
    """Appends one JSON object per logged step to ``metrics.jsonl`` (and to TensorBoard if asked).
    With several processes only the main one writes (the others' loggers do nothing): the loops
    log metrics already reduced over ranks."""

    def __init__(self, out_dir: str | Path, *, backends: list | None = None, resume: bool = False):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.backends = list(backends or [])
        self.active = process_index() == 0
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """On resume, forget lines logged after the checkpoint (they will be logged again)."""
        if not self.active or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            logged = json.loads(line).get("step", 0) if line.strip() else None
            if isinstance(logged, int) and logged <= step:  # "final" rows are written again
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int | str, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        row = {"step": step}
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().float().item()
            row[key] = value
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.backends and isinstance(step, int):  # "final" rows stay in the JSONL file
            values = numeric(row)
            for backend in self.backends if values else ():
                backend.log(step, values)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []


class Progress:
    """A rich progress bar with the latest metrics; plain lines when stdout is not a terminal."""

    def __init__(self, total: int, description: str, *, start: int = 0, enabled: bool = True):
        import sys

        self.total, self.description, self.enabled = total, description, enabled
        self.interactive = enabled and sys.stdout.isatty()
        self.last_print = 0.0
        self.bar = None
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task(description, total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, info: dict[str, float]) -> None:
        if not self.enabled:
            return
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=text)
        elif time.time() - self.last_print > 10 or step == self.total:
            self.last_print = time.time()
            print(f"[{self.description}] step {step}/{self.total}  {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------- checkpoints


@dataclass
class LoopState:
    """Where a loop is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    extra: dict | None = None


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(out_dir: str | Path, *, state: LoopState, modules: dict[str, Any],
                    keep: int = 2) -> Path:
    """``out_dir/checkpoints/step-N``: each module's ``state_dict`` (models, optimizers, schedulers,
    controllers) plus RNG and loop state; only the newest ``keep`` checkpoints stay on disk.

    With several processes every rank calls it: each rank's RNG state is gathered (``rng_per_rank``;
    a rank samples its own dropout masks and responses) and the main process writes the one file
    (data-parallel replicas hold the same weights and optimizer state)."""
    root = Path(out_dir) / "checkpoints"
    path = root / f"step-{state.step:07d}"
    rngs = None
    if process_count() > 1:
        from accelerate.utils import gather_object

        rngs = gather_object([rng_state()])
        if process_index() != 0:
            wait_for_everyone()
            return path
    tmp = root / f".tmp-step-{state.step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    payload = {name: module.state_dict() for name, module in modules.items()}
    blob = {"modules": payload, "rng": rng_state(), "state": state.__dict__}
    if rngs is not None:
        blob["rng_per_rank"] = rngs
    torch.save(blob, tmp / "state.pt")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # a crash mid-save leaves the previous checkpoint intact
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    if rngs is not None:
        wait_for_everyone()
    return path


def wait_for_everyone() -> None:
    """A barrier across the processes of a multi-process run; nothing when alone."""
    if process_count() > 1:
        partial_state().wait_for_everyone()


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = sorted((Path(out_dir) / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: str | Path, *, modules: dict[str, Any]) -> LoopState:
    blob = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    for name, module in modules.items():
        if name not in blob["modules"]:
            raise ValueError(f"checkpoint {path} has no state for '{name}'")
        module.load_state_dict(blob["modules"][name])
    per_rank = blob.get("rng_per_rank")
    if process_count() > 1 and (per_rank is None or len(per_rank) != process_count()):
        raise ValueError(f"checkpoint {path} was written by {len(per_rank or [None])} process(es); "
                         f"resume it with the same number ({process_count()} are running)")
    set_rng_state(per_rank[process_index()] if process_count() > 1 else blob["rng"])
    return LoopState(**blob["state"])


# ---------------------------------------------------------------- a run folder while a loop trains


class Run:
    """A run folder while a loop trains: its position (:class:`LoopState`), ``metrics.jsonl``, the
    progress bar and the checkpoints, shared by the supervised loop and the RL methods.

    With ``resume`` the newest checkpoint restores every one of ``modules`` (state_dict-ables:
    models, optimizer, scheduler, KL controller, ...), the RNG states and the position, and the
    metrics logged after it are forgotten; a fresh run logs ``first_metrics`` at step 0.
    """

    def __init__(self, out_dir: str | Path, name: str, modules: dict[str, Any], *, config: RunConfig,
                 total_steps: int, resume: bool, first_metrics: dict[str, Any] | None = None,
                 checkpoints: bool = True):
        self.out_dir, self.modules, self.total_steps = Path(out_dir), modules, total_steps
        self.checkpoints = checkpoints
        """False for sharded models (FSDP, ZeRO-3): no rank holds whole weights and optimizer state to save"""
        if not checkpoints and process_index() == 0:
            print("parameters are sharded (FSDP / ZeRO-3): no periodic checkpoints, so no --resume; final/ is saved")
        self.save_every, self.keep_checkpoints = config.save_every, config.keep_checkpoints
        self.state = LoopState()
        checkpoint = latest_checkpoint(self.out_dir) if resume else None
        if resume and checkpoint is None:
            print(f"--resume: no checkpoint in {self.out_dir}; starting from scratch")
        if checkpoint is not None:
            self.state = load_checkpoint(checkpoint, modules=modules)
            print(f"resumed from {checkpoint} at step {self.state.step}")
        backends = []
        if process_index() == 0:
            config.log.validate()
            names = list(config.log.backends) + (["tensorboard"] if config.tensorboard else [])
            backends = open_backends(names, self.out_dir, project=config.log.project, config=dataclasses.asdict(config))
        self.logger = MetricsLogger(self.out_dir, backends=backends, resume=checkpoint is not None)
        if checkpoint is not None:
            self.logger.truncate_after(self.state.step)
        elif first_metrics:
            self.logger.log(0, first_metrics)
        self.progress = Progress(total_steps, name, start=self.state.step,
                                 enabled=config.progress and process_index() == 0)

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps

    def checkpoint_if_due(self) -> None:
        """Save a checkpoint every ``save_every`` steps and after the last one."""
        if not self.checkpoints:
            return
        if (self.save_every and self.state.step % self.save_every == 0) or self.done:
            save_checkpoint(self.out_dir, state=self.state, modules=self.modules, keep=self.keep_checkpoints)

    def close(self) -> None:
        self.progress.close()
        self.logger.close()
