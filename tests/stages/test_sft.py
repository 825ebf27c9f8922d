"""SFT / pre-training loop end to end on the tiny model: loss falls, resume is exact, output loads."""

import json

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.train.sft import OptimConfig, PretrainConfig, SFTConfig, run_pretrain, run_sft

RECORDS = [{"prompt": f"User: what color is the {n}?\nAssistant:", "completion": f" the {n} is {c}."}
           for n, c in [("dax", "red"), ("wug", "blue"), ("zorp", "green"), ("fep", "pink")]] * 12


@pytest.fixture
def sft_data(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def make_config(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(out), batch_size=8, max_length=64,
                optim=OptimConfig(learning_rate=3e-3, warmup_ratio=0.0), eval_fraction=0.0, log_every=1,
                save_every=0, eval_every=0, progress=False, seed=3)
    base.update(kw)
    return SFTConfig(**base)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sft_loss_falls_and_final_loads_with_plain_transformers(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    final = run_sft(make_config(tiny_model_dir, sft_data, out, max_steps=60,
                                optim=OptimConfig(learning_rate=1e-2, warmup_ratio=0.0)))
    losses = [m["train/loss"] for m in read_metrics(out) if "train/loss" in m]
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert (out / "config.yaml").exists()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    ids = tok("User: what color is the dax?\nAssistant:", return_tensors="pt")
    out_ids = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out_ids.shape[1] > ids["input_ids"].shape[1]
    text = tok.decode(out_ids[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.startswith(" the")  # every demonstration answers " the <name> is ..."


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_model_dir, sft_data, tmp_path, stopped_at_checkpoint):
    # N steps, stop, resume N more == 2N uninterrupted (fp32, CPU): same data order, optimizer
    # moments, schedule and RNG after the restart.
    n = 6
    full = run_sft(make_config(tiny_model_dir, sft_data, tmp_path / "full", max_steps=2 * n))
    half_cfg = make_config(tiny_model_dir, sft_data, tmp_path / "half", max_steps=2 * n, save_every=n)
    # the interruption: the first n steps of a run with the full schedule, stopped after its checkpoint
    with stopped_at_checkpoint(n):
        run_sft(half_cfg)
    resumed = run_sft(half_cfg, resume=True)

    from safetensors.torch import load_file

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    steps = [m["step"] for m in read_metrics(tmp_path / "half") if "train/loss" in m]
    assert steps == list(range(1, 2 * n + 1))  # no step logged twice after the resume


@pytest.mark.slow
def test_pretrain_on_packed_text(tiny_model_dir, tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": f"the {n} is {c}. the {n} eats {f}."}) + "\n"
                            for n, c, f in [("dax", "red", "fish"), ("wug", "blue", "seeds")] * 30))
    cfg = PretrainConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "pt"), batch_size=4,
                         max_length=32, max_steps=15, optim=OptimConfig(learning_rate=3e-3), log_every=1,
                         save_every=0, eval_every=5, eval_fraction=0.1, progress=False)
    run_pretrain(cfg)
    metrics = read_metrics(tmp_path / "pt")
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert losses[-1] < losses[0]
    assert any("eval/loss" in m for m in metrics)
    assert metrics[0]["data/documents"] == 60


def test_config_validation_names_the_field(tmp_path):
    from rlhfkit.config import ConfigError

    with pytest.raises(ConfigError, match="model"):
        load_config(SFTConfig, None, ["data=x.jsonl"])
    with pytest.raises(ConfigError, match="unknown config key 'optim.lr'"):
        load_config(SFTConfig, None, ["model=m", "data=d", "optim.lr=1"])
