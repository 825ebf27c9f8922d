"""``gradient_checkpointing=true`` (every stage) recomputes activations in the backward pass: the
trained weights are those of a run without it, for a causal LM (SFT) and a reward model."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_gradient_checkpointing_changes_memory_not_results(stage, tiny_model_dir, tmp_path, one_torch_thread,
                                                           monkeypatch):
    from rlhfkit.train.reward_model import RewardConfig, run_reward
    from rlhfkit.train.sft import OptimConfig, SFTConfig, run_sft

    names = ["dax", "wug", "zorp", "fep"]
    if stage == "sft":
        rows = [{"prompt": f"User: what color is the {n}?\nAssistant:", "completion": f" the {n} is red."} for n in names]
        cls, run = SFTConfig, run_sft
    else:
        rows = [{"prompt": f"User: what color is the {n}?\nAssistant:", "chosen": f" the {n} is red.",
                 "rejected": f" the {n} is blue."} for n in names]
        cls, run = RewardConfig, run_reward
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    calls = []  # the decoder layers' recomputation goes through transformers' checkpoint function
    import transformers.modeling_utils as modeling_utils

    original = modeling_utils.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counted)
    finals, checkpointed = {}, {}
    for flag in (False, True):
        config = cls(model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / f"{stage}-{flag}"),
                     batch_size=4, max_length=48, max_steps=3, eval_fraction=0.0, save_every=0, progress=False,
                     precision="fp32", disable_dropout=True, gradient_checkpointing=flag,
                     optim=OptimConfig(learning_rate=3e-3, warmup_ratio=0.0))
        before = len(calls)
        finals[flag] = run(config)
        checkpointed[flag] = len(calls) - before
    # 2 layers × 3 steps (× micro-batches, evaluation passes run without gradients) with the flag, none without
    assert checkpointed[False] == 0 and checkpointed[True] >= 2 * 3
    a, b = weights(finals[False]), weights(finals[True])
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    initial = weights(tiny_model_dir)
    assert max(float((a[k] - initial[k]).abs().max()) for k in initial if k in a) > 1e-3  # it did train
