"""Trainer side of weight sync: the policy's weights as a payload, and how each server kind takes them.

``rollout.sync=disk`` writes the payload into ``rollout.sync_dir`` and asks the server to load it;
``rollout.sync=http`` streams it in the request body (rlhfkit serve only). What is sent:

- **rlhfkit** (``rlhfkit serve``): full fine-tuning sends every tensor of the policy's state dict
  (``model.safetensors``); LoRA sends only the adapter (``adapter_model.safetensors`` +
  ``adapter_config.json``, a few MB), which the server merges into the weights it loaded
  (:mod:`rlhfkit.serve.weights`). Routes: ``POST /reload_weights {"path", "version"}`` or
  ``POST /update_weights?version=k`` with the safetensors bytes.
- **vllm** (``VLLM_SERVER_DEV_MODE=1 vllm serve DIR``): vLLM's ``reload_weights`` re-reads the folder
  it was launched on, so ``sync_dir`` must be that folder; a full HF folder (LoRA merged on the
  trainer) is written there file by file with atomic renames, then ``POST /collective_rpc
  {"method": "reload_weights"}`` and ``POST /reset_prefix_cache`` (cached prefixes were computed
  by the old weights). **Unverified** here (no GPU).
- **sglang** (``python -m sglang.launch_server``): a full HF folder (LoRA merged) written to
  ``sync_dir/vK``, then ``POST /update_weights_from_disk {"model_path": folder}``. **Unverified**.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

FULL_FILE = "model.safetensors"  # the names rlhfkit.serve.weights reads
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def policy_payload(policy) -> tuple[dict[str, torch.Tensor], dict[str, str], dict | None]:
    """(tensors, safetensors metadata, adapter config or None): the adapter alone for a peft model
    (peft's own names), else every tensor of the state dict (tied weights cloned apart: safetensors
    refuses shared storage; the server copies each name into its own parameter)."""
    if _is_peft(policy):
        from peft import get_peft_model_state_dict

        config = policy.peft_config["default"].to_dict()
        config = json.loads(json.dumps(config, default=lambda x: sorted(x) if isinstance(x, set) else str(x)))
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
                   for k, v in get_peft_model_state_dict(policy).items()}
        return tensors, {"adapter_config": json.dumps(config)}, config
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in policy.state_dict().items()}
    return tensors, {}, None


def payload_bytes(policy) -> bytes:
    """The payload as one safetensors file in memory (``rollout.sync=http``)."""
    from safetensors.torch import save

    tensors, metadata, _ = policy_payload(policy)
    return save(tensors, metadata=metadata)


def write_payload(policy, folder: Path) -> Path:
    """The payload as a sync folder rlhfkit serve reads (``rollout.sync=disk``): written to a
    staging name first, then renamed, so the server never reads half a file."""
    from safetensors.torch import save_file

    tensors, metadata, config = policy_payload(policy)
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if config is None:
        save_file(tensors, str(staging / FULL_FILE), metadata=metadata)
    else:
        save_file(tensors, str(staging / ADAPTER_FILE), metadata=metadata)
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder


def write_hf_folder(policy, tokenizer, folder: Path, *, in_place: bool) -> Path:
    """A full HF folder (LoRA merged) for vLLM / SGLang. ``in_place``: replace the files of
    ``folder`` one by one with atomic renames (vLLM re-reads the folder it serves)."""
    from rlhfkit.models.loading import save_model

    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(policy, tokenizer, staging)
    if not in_place:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        os.replace(item, folder / item.name)
    shutil.rmtree(staging, ignore_errors=True)
    return folder
