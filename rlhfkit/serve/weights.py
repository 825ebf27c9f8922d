"""Weight sync on the serving side: load new policy weights into the served model, in place.

Two payloads, the same for both routes (``POST /reload_weights {"path", "version"}`` reads them
from a folder; ``POST /update_weights`` receives the safetensors bytes in its body):

- a full state dict (``model.safetensors``, names as the served model's ``state_dict()``): every
  tensor is copied into the model (cast to its dtype); a missing or unknown name is an error;
- a LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``, or the config as the
  ``adapter_config`` entry of the safetensors metadata, as peft saves it): merged into the
  served weights as W = W₀ + (α / r)·B·A (Hu et al. 2021, eq. 3; α / √r with rsLoRA), where W₀
  are the weights the server loaded (kept aside the first time an adapter arrives), so each
  adapter replaces the last one instead of adding to it.

The served model keeps its identity (the chat and completions routes hold it), so nothing else
needs to know a sync happened; the version is recorded by :class:`WeightState`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.serve.schema import RequestError

FULL_FILE = "model.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


@dataclass
class WeightState:
    """The served weights' version, where they came from, and the base weights under a LoRA merge."""

    version: int = 0
    source: str | None = None
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    """W₀ of each weight an adapter has touched (the weights before any adapter)"""


def read_folder(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(tensors, adapter config or None) from a sync folder."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise RequestError(f"path {path!r} is not a folder on the server", "path")
    if (folder / ADAPTER_FILE).is_file():
        if not (folder / ADAPTER_CONFIG).is_file():
            raise RequestError(f"{folder / ADAPTER_FILE} has no {ADAPTER_CONFIG} beside it", "path")
        return load_file(str(folder / ADAPTER_FILE)), json.loads((folder / ADAPTER_CONFIG).read_text())
    if (folder / FULL_FILE).is_file():
        return load_file(str(folder / FULL_FILE)), None
    raise RequestError(f"{path!r} holds neither {FULL_FILE} nor {ADAPTER_FILE}", "path")


def read_bytes(payload: bytes) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(tensors, adapter config or None) from safetensors bytes (``adapter_config`` in the metadata).
    The header is 8 bytes of little-endian length, then JSON whose ``__metadata__`` holds strings."""
    from safetensors.torch import load

    try:
        tensors = load(payload)
        size = int.from_bytes(payload[:8], "little")
        metadata = json.loads(payload[8: 8 + size]).get("__metadata__") or {}
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise RequestError(f"the body is not a safetensors file: {err}") from None
    config = metadata.get("adapter_config")
    return tensors, json.loads(config) if config else None


@torch.no_grad()
def load_full(model, tensors: dict[str, torch.Tensor], state: WeightState) -> None:
    """Copy a full state dict into ``model`` (names and shapes must match)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unknown = sorted(set(tensors) - set(own))
    if missing or unknown:
        raise RequestError(f"the weights do not fit the served model: missing {missing[:3]}, unknown {unknown[:3]}"
                           f" ({len(missing)} missing, {len(unknown)} unknown)")
    for name, value in tensors.items():
        if own[name].shape != value.shape:
            raise RequestError(f"weight {name}: shape {tuple(value.shape)}, the served model has "
                               f"{tuple(own[name].shape)}")
    for name, value in tensors.items():
        own[name].copy_(value)
    state.base.clear()  # these weights are the new W₀


def lora_deltas(tensors: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """{served weight name: (α / r)·B·A} of a peft adapter state dict (keys
    ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``). Only plain LoRA on linear
    layers: DoRA, fan_in_fan_out and modules_to_save are refused with a clear error."""
    for key in ("use_dora", "fan_in_fan_out"):
        if config.get(key):
            raise RequestError(f"adapter_config {key}=true is not supported by rlhfkit serve's merge")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / r ** 0.5 if config.get("use_rslora") else alpha / r
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            tail = f".{part}.weight"
            if key.endswith(tail):
                module = key[: -len(tail)]
                module = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
                pairs.setdefault(module, {})[part] = value
                break
        else:
            raise RequestError(f"adapter tensor {key!r} is not a LoRA A/B weight (modules_to_save is not supported)")
    deltas = {}
    for module, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise RequestError(f"adapter module {module}: lora_A and lora_B are both needed")
        deltas[f"{module}.weight"] = scale * (ab["lora_B"].float() @ ab["lora_A"].float())  # (out, r)(r, in)
    return deltas


@torch.no_grad()
def load_adapter(model, tensors: dict[str, torch.Tensor], config: dict, state: WeightState) -> None:
    """W = W₀ + (α / r)·B·A for every adapted weight (W₀ kept in ``state.base``)."""
    own = model.state_dict()
    deltas = lora_deltas(tensors, config)
    for name, delta in deltas.items():
        if name not in own:
            raise RequestError(f"adapter targets {name!r}, which the served model does not have")
        if own[name].shape != delta.shape:
            raise RequestError(f"adapter delta for {name}: shape {tuple(delta.shape)}, served {tuple(own[name].shape)}")
    for name, delta in deltas.items():
        base = state.base.setdefault(name, own[name].detach().clone())
        own[name].copy_((base.float() + delta.to(base.device)).to(own[name].dtype))


def apply_weights(model, tensors: dict[str, torch.Tensor], adapter_config: dict | None, state: WeightState, *,
                  version: int | None, source: str) -> int:
    """Load a payload into ``model``; record its version (the given one, else the last + 1)."""
    if adapter_config is None:
        load_full(model, tensors, state)
    else:
        load_adapter(model, tensors, adapter_config, state)
    state.version = state.version + 1 if version is None else version
    state.source = source
    return state.version
