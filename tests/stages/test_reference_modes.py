"""The three ways a direct method gets its reference log-probs train the same: cached for the examples the
run uses (the default), precomputed for the whole file (the old way), and computed in every step by a frozen
copy of the model (precompute_ref_logps=false without LoRA)."""

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.train.direct import DPOConfig, KTOConfig, run_dpo, run_kto
from rlhfkit.train.direct import preference as P
from rlhfkit.train.direct.batches import ReferenceLogps
from rlhfkit.train.optim import OptimConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(path):
    rng = random.Random(0)
    rows = []
    for i in range(40):
        name = rng.choice(["dax", "wug", "zorp", "fep", "blick"])
        rows.append({"prompt": f"User: what color is the {name}?\nAssistant:", "chosen": f" the {name} is red.",
                     "rejected": f" the {name} is blue." if i % 3 else f" it is blue, i think, the {name} is blue."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(cls, run, model, data, out, precision="fp32", **kw):
    config = cls(model=str(model), data=str(data), output_dir=str(out), batch_size=4, max_length=48, max_steps=4,
                 optim=OptimConfig(learning_rate=3e-3, warmup_ratio=0.0), log_every=1, save_every=0,
                 progress=False, seed=1, precision=precision, **kw)
    config.validate()
    final = run(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r], load_file(final / "model.safetensors")


@pytest.mark.parametrize("cls,run", [(DPOConfig, run_dpo), (KTOConfig, run_kto)])
def test_cached_precomputed_and_live_references_train_the_same(tiny_model_dir, tmp_path, monkeypatch, cls, run):
    data = _data(tmp_path / "p.jsonl")
    lazy = _run(cls, run, tiny_model_dir, data, tmp_path / "lazy")
    live = _run(cls, run, tiny_model_dir, data, tmp_path / "live", precompute_ref_logps=False)
    # the old way: every example of the file, before training
    monkeypatch.setattr(P, "items_used", lambda config, lengths, **kw: list(range(len(lengths))))
    full = _run(cls, run, tiny_model_dir, data, tmp_path / "full")
    # cached for the examples used = the whole file's numbers, bit for bit: each row runs in its whole-file batch
    assert lazy[0] == full[0]
    assert all(torch.equal(lazy[1][key], full[1][key]) for key in lazy[1])
    # live: the same sequences by the same initial weights, but in the training batch (other rows, other matmul
    # shapes): equal to float rounding, ~1e-7 relative on log-probs of ~-20
    assert live[0] == pytest.approx(lazy[0], abs=1e-5)
    for key in lazy[1]:
        assert torch.allclose(lazy[1][key], live[1][key], atol=1e-5), key
    assert lazy[0][-1] < lazy[0][0]  # it learned: the comparison is not of runs that did nothing
    assert (tmp_path / "lazy" / P.REFERENCE_FILE).exists() and not (tmp_path / "live" / P.REFERENCE_FILE).exists()


def test_cached_reference_is_bit_exact_with_the_whole_file_in_bf16(tiny_model_dir, tmp_path, monkeypatch):
    # bf16 rounds each row by the batch it runs in (up to ~0.03 nats on a log-prob sum): the cache must still
    # give every example the number the whole-file precomputation gives it, so the default run does not move
    data = _data(tmp_path / "p.jsonl")
    lazy = _run(DPOConfig, run_dpo, tiny_model_dir, data, tmp_path / "lazy", precision="bf16")
    monkeypatch.setattr(P, "items_used", lambda config, lengths, **kw: list(range(len(lengths))))
    full = _run(DPOConfig, run_dpo, tiny_model_dir, data, tmp_path / "full", precision="bf16")
    assert lazy[0] == full[0]


def test_a_batch_whose_reference_was_not_planned_is_a_clear_error():
    ref = ReferenceLogps({"train": {"chosen": torch.tensor([-1.0, math.nan])}},
                         {"train": {"chosen": torch.tensor([2.0, math.nan])}})
    assert ref.select("train", [0], "cpu")["chosen"].sum.tolist() == [-1.0]
    with pytest.raises(RuntimeError, match=r"train examples \[0, 1\] were not computed"):
        ref.select("train", [0, 1], "cpu")
