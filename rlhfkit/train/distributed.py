"""Many processes through accelerate (``accelerate launch`` / ``torchrun``): what every loop needs to
train the same model with N data-parallel ranks as with one process on an N-times larger batch.

- :func:`shard`: a rank's share of a global batch (pure; contiguous, so a GRPO group stays on one rank);
- :class:`Forward` and :func:`call`: every training forward runs through the wrapped module (DDP's
  gradient all-reduce and FSDP's unsharding hook onto ``forward``), while the loss code keeps
  receiving the plain Hugging Face model and its completion-only head (:mod:`rlhfkit.models.forward`);
- :func:`prepare_model`, :func:`unwrap`, :func:`inner_state_dict`, :func:`save_final`: wrapping,
  unwrapping, full weights and ``final/`` written once;
- :func:`global_sums`, :func:`global_whiten`, :func:`global_masked_whiten`, :func:`gather_rows`:
  statistics over all ranks from all-reduced sums and counts (or the gathered rows), never from a
  mean of per-rank means; :func:`global_means` / :func:`reduce_stats` average per-rank metric means,
  exact only where every rank holds equally many rows (the RL loops; the supervised loop sums);
- :func:`check_accumulation`, :func:`require_replicated`: the combinations refused with a clear error.

One process changes nothing: the model is not wrapped, nothing is all-reduced, and every helper
returns its input. Not here: the loops (:mod:`rlhfkit.train.supervised`, :mod:`rlhfkit.train.rl`)
and the run folder (:mod:`rlhfkit.train.run`, which writes from the main process only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def shard(items: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s contiguous share of ``items``: sizes differ by at most one, the first
    ``len % world`` ranks take the extra item; concatenated in rank order they give ``items`` back.
    E.g. 5 items on 2 ranks: [0, 1, 2] and [3, 4]."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return list(items[start: start + base + (1 if rank < extra else 0)])


def is_distributed(accelerator) -> bool:
    return accelerator is not None and accelerator.num_processes > 1


def is_sharded(accelerator) -> bool:
    """Parameters sharded over ranks (FSDP, DeepSpeed ZeRO-3): no rank holds the whole model."""
    from accelerate.utils import DistributedType

    if accelerator is None:
        return False
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


class Forward(torch.nn.Module):
    """A model behind one ``forward(fn, *args)`` that returns ``fn(model, *args)``.

    DDP all-reduces gradients only for a backward whose forward went through the DDP wrapper, and
    FSDP gathers the root's weights in the root's forward hook; our losses call the decoder and the
    head directly (the completion-only head), so the whole loss computation is the wrapped forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        # FSDP's auto-wrap reads the decoder layer class here (transformers' _no_split_modules)
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, fn: Callable, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def prepare_model(accelerator, model: torch.nn.Module, *others):
    """``accelerator.prepare(model, *others)``; with several processes the model goes behind
    :class:`Forward` first. Returns what ``prepare`` returns (a tuple when ``others`` are given)."""
    if is_distributed(accelerator):
        model = Forward(model)
    return accelerator.prepare(model, *others)


def unwrap(accelerator, model) -> torch.nn.Module:
    """The plain Hugging Face model inside a prepared one (the same module object: its weights)."""
    inner = accelerator.unwrap_model(model) if accelerator is not None else model
    return inner.model if isinstance(inner, Forward) else inner


def call(model, fn: Callable, *args, **kwargs):
    """``fn(plain model, *args)``, through the wrapper's forward when the model is wrapped."""
    if isinstance(model, Forward) or isinstance(getattr(model, "module", None), Forward):
        return model(fn, *args, **kwargs)
    return fn(model, *args, **kwargs)


def inner_state_dict(accelerator, model) -> dict[str, torch.Tensor]:
    """Full (gathered) weights of the plain model, keyed as ``save_pretrained`` expects. Every rank
    must call it (FSDP gathers shards); on a plain or DDP model it is the module's own state dict."""
    full = accelerator.get_state_dict(model)
    prefix = "model."
    if isinstance(accelerator.unwrap_model(model), Forward):
        full = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
    return full


def global_sums(accelerator, values: Sequence[float]) -> list[float]:
    """Each value summed over all ranks (float64); one process returns them unchanged."""
    if not is_distributed(accelerator):
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").tolist()


def global_means(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Per-rank means averaged over ranks: exact when every rank averaged equally many items (the
    RL loops: every rank holds ``batch_size`` rows); one process returns them unchanged."""
    if not is_distributed(accelerator) or not metrics:
        return metrics
    keys = sorted(metrics)
    sums = global_sums(accelerator, [metrics[k] for k in keys])
    return {k: s / accelerator.num_processes for k, s in zip(keys, sums)}


def global_whiten(x: torch.Tensor, accelerator, *, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / (std + eps) with the mean and the unbiased std of ``x`` over ALL ranks, from the
    all-reduced n, Σx and Σx² (var = (Σx² − n·mean²) / (n − 1)), so N ranks whiten as one process
    does on their concatenation. One process: ``x.std()``'s own formula, unchanged."""
    if not is_distributed(accelerator):
        return (x - x.mean()) / (x.std() + eps)
    n, s, ss = global_sums(accelerator, [x.numel(), float(x.double().sum()), float((x.double() ** 2).sum())])
    mean = s / n
    std = max((ss - n * mean * mean) / max(n - 1, 1), 0.0) ** 0.5
    return (x - mean) / (std + eps)


def reduce_stats(accelerator, stats: dict[str, Any]) -> dict[str, Any]:
    """Numeric entries of ``stats`` averaged over ranks (see :func:`global_means`); others kept.
    One process: ``stats`` itself."""
    if not is_distributed(accelerator):
        return stats
    numeric = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {**stats, **global_means(accelerator, numeric)}


def save_final(accelerator, model, tokenizer, out_dir, *, save_adapter_only: bool = False):
    """``final/`` as a plain Hugging Face folder, written by the main process while the others wait
    (every rank calls it). Returns the folder."""
    from pathlib import Path

    from rlhfkit.models.loading import save_model

    plain = unwrap(accelerator, model)
    if not is_distributed(accelerator):
        return save_model(plain, tokenizer, out_dir, save_adapter_only=save_adapter_only)
    if is_sharded(accelerator):  # FSDP: every rank takes part in gathering the full weights
        state = inner_state_dict(accelerator, model)
        if accelerator.is_main_process:
            plain.save_pretrained(str(out_dir), state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(out_dir))
    elif accelerator.is_main_process:
        save_model(plain, tokenizer, out_dir, save_adapter_only=save_adapter_only)
    accelerator.wait_for_everyone()
    return Path(out_dir)


def global_masked_whiten(x: torch.Tensor, mask: torch.Tensor, accelerator, *, shift_mean: bool = True) -> torch.Tensor:
    """:func:`rlhfkit.ops.masked_whiten` over the unmasked entries of ALL ranks: the mean from the
    all-reduced n and Σ mask·x, then the unbiased variance from the all-reduced Σ mask·(x − mean)²
    (the same two passes as ``masked_var``). One process: ``masked_whiten`` itself."""
    from rlhfkit.ops import masked_whiten

    if not is_distributed(accelerator):
        return masked_whiten(x, mask, shift_mean=shift_mean)
    m = mask.to(x.dtype)
    n, s = global_sums(accelerator, [float(m.sum()), float((x * m).sum())])
    if n < 2:
        raise ValueError(f"whitening over all ranks needs at least 2 unmasked entries, got {int(n)}")
    mean = s / n
    var = global_sums(accelerator, [float((((x - mean) ** 2) * m).sum())])[0] / n * n / (n - 1)
    whitened = (x - mean) * (var + 1e-8) ** -0.5
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


def gather_rows(accelerator, x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order (the global batch's order); one process: ``x``."""
    if not is_distributed(accelerator):
        return x
    return accelerator.gather(x.contiguous())


def check_accumulation(accelerator, micro_batches: int) -> None:
    """DeepSpeed steps its optimizer inside ``backward`` on every micro-batch that accelerate marks
    as a gradient-sync point, and rlhfkit accumulates micro-batches itself; until the two are wired
    together (not verified without a GPU here) a ZeRO run takes one micro-batch per step."""
    from accelerate.utils import DistributedType

    if accelerator is not None and accelerator.distributed_type == DistributedType.DEEPSPEED and micro_batches > 1:
        from rlhfkit.config import ConfigError

        raise ConfigError(f"gradient_accumulation_steps={micro_batches}: with DeepSpeed (zero2.yaml, zero3.yaml) set "
                          f"gradient_accumulation_steps=1 and raise batch_size or the number of processes instead")


def require_replicated(accelerator, stage: str) -> None:
    """Online RL generates with the plain policy on each rank, a different number of decoding steps per
    rank; with sharded weights (FSDP, ZeRO-3) every forward is a collective gather, so ranks would wait on
    each other forever. Until generation is sharding-aware (or served, issue 13 §2) those configs are refused."""
    if is_sharded(accelerator):
        from rlhfkit.config import ConfigError

        raise ConfigError(f"{stage} with sharded weights (FSDP, ZeRO-3) is not supported: generation runs on each "
                          f"rank's own prompts; use configs/accelerate/ddp.yaml or zero2.yaml (with LoRA for large "
                          f"models)")
