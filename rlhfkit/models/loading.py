"""Load any causal LM / tokenizer from a folder (or hub name when online); LoRA through peft; save.

What is saved is always a standard Hugging Face folder: ``AutoModelForCausalLM.from_pretrained``
loads it without rlhfkit. With LoRA the adapter is merged into the weights by default
(``save_adapter_only=True`` keeps a peft adapter folder instead).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rlhfkit")


def quiet_transformers() -> None:
    """Our own progress bars replace the per-file ones transformers prints on every load and save."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@dataclass
class LoraSettings:
    """LoRA (Hu et al. 2021) through peft."""

    r: int = 0
    """rank of the LoRA update; 0 disables LoRA (full fine-tuning)"""
    alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)"""
    dropout: float = 0.0
    """dropout on the LoRA input"""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """module names that get a LoRA adapter"""
    save_adapter_only: bool = False
    """save the peft adapter folder instead of merging it into the base weights"""


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        # Masks carry which positions are real, so pad = EOS is safe for our loops; we say so.
        log.warning("tokenizer in %s has no pad token; using EOS as pad", path)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_causal_lm(path: str | Path, *, dtype: str = "float32", lora: LoraSettings | None = None):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    path = Path(path)
    if not (path / "config.json").exists() and path.exists():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))
    if lora is not None and lora.r > 0:
        model = apply_lora(model, lora, task_type="CAUSAL_LM")
    return model


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end a response: the tokenizer's EOS and every ``eos_token_id`` of the model's
    generation config (chat models stop at an end-of-turn token that is not the tokenizer's EOS:
    Gemma's ``<end_of_turn>``, Llama-3's ``<|eot_id|>`` beside ``<|end_of_text|>``)."""
    found = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found += configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys(int(t) for t in found if t is not None))


def disable_dropout(model) -> None:
    """p = 0 in every dropout layer, and in the attention dropout that HF attention modules keep as a
    float (Llama, Qwen2, Mistral apply it functionally, not through an ``nn.Dropout``). The model's
    config is left as it is, so a saved folder keeps its own dropout settings.

    Why (Huang et al. 2024; TRL's ``disable_dropout=True``): a preference or RL loss compares the
    policy's log-probs with a reference's or with the rollout's. With dropout on in training mode
    those differ even when the weights are equal, so DPO's implicit rewards are noise at step 0 and
    PPO's first ratio is not 1. LoRA's own dropout (``lora.dropout``) is an ``nn.Dropout`` too and is
    switched off with the rest, as in TRL; set ``disable_dropout=false`` to keep it."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if getattr(module, "attention_dropout", None) and isinstance(module.attention_dropout, float):
            module.attention_dropout = 0.0


def apply_lora(model, lora: LoraSettings, *, task_type: str):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type=task_type)
    return get_peft_model(model, config)


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def save_model(model, tokenizer, out_dir: str | Path, *, save_adapter_only: bool = False) -> Path:
    """A standard HF folder; LoRA merged unless ``save_adapter_only``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_peft(model) and not save_adapter_only:
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


def model_label(path: str | Path) -> str:
    """A short name for a model folder: its own name, or "<stage>/final" for a stage's final folder
    (every rlhfkit stage saves into ``<run>/<stage>/final``, so "final" alone says nothing)."""
    folder = Path(path)
    return f"{folder.parent.name}/{folder.name}" if folder.name == "final" and folder.parent.name else folder.name
