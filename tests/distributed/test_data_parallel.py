"""Every stage with 2 processes (torchrun, gloo, CPU) trains the same model as 1 process on the
2×-larger batch, and a 2-process run stopped at a checkpoint and resumed equals an uninterrupted one.

The 2-process runs go through ONE torchrun launch (``stage_worker.py`` runs them one after another),
the resumed run through a second: interpreter and torch start-up are paid twice, not once per run.
The 1-process twins run here, in the test process. Each comparison also checks that the weights moved
(a run that trained nothing would match trivially).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("stage_worker.py")
REPO = Path(__file__).resolve().parents[2]
NAMES = ["dax", "wug", "zorp", "fep", "blick", "toma"]
TOLERANCE = 1e-5
RESUMED = ("sft", "dpo", "grpo")


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def data_files(root: Path) -> dict[str, str]:
    rng = random.Random(0)
    sft = [{"prompt": f"User: what color is the {n}?\nAssistant:", "completion": f" the {n} is {c}."}
           for n, c in [("dax", "red"), ("wug", "blue"), ("zorp", "green"), ("fep", "pink")]] * 12
    pairs = []
    for i in range(40):
        name = rng.choice(NAMES)
        rejected = f" the {name} is blue." if i % 5 else f" it is blue, i think, the {name} is blue."
        pairs.append({"prompt": f"User: what color is the {name}?\nAssistant:", "chosen": f" the {name} is red.",
                      "rejected": rejected})
    rankings = [{"prompt": f"User: what color is the {n}?\nAssistant:",
                 "responses": [f" the {n} is blue.", f" the {n} is red.", " it is blue, i think."],
                 "ranking": [1, [0, 2]]} for n in NAMES]
    prompts = [{"prompt": f"User: what color is the {n}?\nAssistant:"} for n in NAMES[:4] * 4]
    return {"sft": write(root / "sft.jsonl", sft), "sft_tail": write(root / "sft_tail.jsonl", sft[:9]),
            "pairs": write(root / "pairs.jsonl", pairs),
            "reward": write(root / "reward.jsonl", pairs[:20] + rankings),
            "prompts": write(root / "prompts.jsonl", prompts)}


def configs(model: str, files: dict[str, str], root: Path, *, processes: int) -> dict[str, dict]:
    """Each stage's config for ``processes`` ranks: per-rank batches shrink so the GLOBAL batch is the same."""
    common = dict(model=model, log_every=1, progress=False, precision="fp32", seed=3)
    optim = {"learning_rate": 3e-3, "warmup_ratio": 0.0}
    b = 8 // processes
    rl = dict({k: v for k, v in common.items() if k != "log_every"}, prompts=files["prompts"], save_every=0,
              sampling={"max_new_tokens": 8, "batch_size": 4}, rollout_seed_per_chunk=True,
              optim={"learning_rate": 3e-3, "warmup_ratio": 0.0, "min_lr_ratio": 1.0})
    return {
        # 2 micro-batches per step: no_sync on the first, the token weighting across both
        "sft": dict(common, data=files["sft"], output_dir=str(root / "sft"), batch_size=b // 2,
                    gradient_accumulation_steps=2, max_length=64, max_steps=4, save_every=2, eval_fraction=0.0,
                    eval_every=0, disable_dropout=True, optim=optim),
        # 9 examples in global batches of 8: every other step holds 1 example, so one rank has none and
        # takes a zero-weight pass
        "sft_tail": dict(common, data=files["sft_tail"], output_dir=str(root / "sft_tail"), batch_size=b,
                         max_length=64, max_steps=3, save_every=0, eval_fraction=0.0, eval_every=0,
                         disable_dropout=True, optim=optim),
        # with a held-out split evaluated every step (every rank evaluates it through the wrapped model)
        "dpo": dict(common, data=files["pairs"], output_dir=str(root / "dpo"), batch_size=b, max_length=48,
                    max_steps=3, save_every=0, eval_fraction=0.1, eval_every=1, optim=optim),
        # LoRA: only the adapter trains (DDP skips the frozen weights), the reference is the adapter off
        "dpo_lora": dict(common, data=files["pairs"], output_dir=str(root / "dpo_lora"), batch_size=b,
                         max_length=48, max_steps=3, save_every=0, eval_fraction=0.0, lora={"r": 4, "alpha": 8},
                         optim=optim),
        # with held-out records: the main process evaluates, calibrates and writes eval.json
        "reward": dict(common, data=files["reward"], output_dir=str(root / "reward"), batch_size=b, max_length=48,
                       max_steps=3, save_every=0, eval_fraction=0.2, ties="soft", optim=optim),
        # one rollout batch of 8 responses (2 prompts × 4) per step; each rank generates its own prompts'
        # groups in one chunk, so the 1-process run generates the same two chunks with the same seeds
        "grpo": dict(rl, output_dir=str(root / "grpo"), batch_size=b, num_generations=4, total_steps=3,
                     whiten_advantages=True),
        # PPO with a value head, 2 epochs over the batch, whitened rewards and advantages: every statistic
        # over both ranks' rows
        # (learning rates: a few embedding rows get float-noise-sized gradients, which Adam scales up to a
        # fraction of lr per step; at lr 1e-2 the two PPO runs end 2.7e-5 apart on one of them, at 3e-3 8e-6)
        "ppo": dict(rl, output_dir=str(root / "ppo"), batch_size=b, value_model="head", total_steps=3,
                    num_ppo_epochs=2, whiten_rewards=True,
                    optim={"learning_rate": 1e-3, "warmup_ratio": 0.0, "min_lr_ratio": 1.0}),
        # running score statistics over both ranks. One iteration only: normalised scores sum to 0 on the
        # first batch, so the value head's bias gradient is float noise there, which Adam scales up to
        # ~lr (1e-3 apart after one step), and the next samples may differ
        "ppo_moments": dict(rl, output_dir=str(root / "ppo_moments"), batch_size=b, value_model="head",
                            total_steps=1, normalize_scores=True),
    }


def torchrun(spec: dict, path: Path) -> None:
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(WORKER), str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def two_process_runs(tiny_model_dir, tmp_path_factory):
    """The 2-process runs of every stage, plus SFT, DPO and GRPO runs stopped after their step-2 checkpoint
    (first launch) and resumed (second launch)."""
    root = tmp_path_factory.mktemp("dist")
    files = data_files(root)
    two = configs(str(tiny_model_dir), files, root / "two", processes=2)
    stopped = {stage: dict(two[stage], output_dir=str(root / "two" / f"{stage}_resumed"), save_every=2)
               for stage in RESUMED}
    runs = [{"stage": s.split("_")[0], "config": c} for s, c in two.items()]
    runs += [{"stage": s, "config": c, "stop_at": 2} for s, c in stopped.items()]
    torchrun({"runs": runs}, root / "first.json")
    logged_before_stop = {}
    for stage, config in stopped.items():
        assert not (Path(config["output_dir"]) / "final").exists()  # it did stop
        logged_before_stop[stage] = (Path(config["output_dir"]) / "metrics.jsonl").read_text().splitlines()
    torchrun({"runs": [{"stage": s, "config": c, "resume": True} for s, c in stopped.items()]}, root / "resume.json")
    return {"root": root, "files": files, "two": two, "logged_before_stop": logged_before_stop}


def weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def one_process(stage: str, config: dict) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("stage_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.run_one({"stage": stage, "config": config})
    return Path(config["output_dir"]) / "final"


@pytest.mark.parametrize("stage", ["sft", "sft_tail", "dpo", "dpo_lora", "reward", "grpo", "ppo"])
def test_two_processes_equal_one_process_on_the_global_batch(stage, two_process_runs, tiny_model_dir,
                                                             one_torch_thread):
    root = two_process_runs["root"]
    one = configs(str(tiny_model_dir), two_process_runs["files"], root / "one", processes=1)[stage]
    final_one = one_process(stage.split("_")[0], one)
    final_two = Path(two_process_runs["two"][stage]["output_dir"]) / "final"
    a, b = weights(final_one), weights(final_two)
    initial = weights(tiny_model_dir)
    moved = max(float((a[k] - initial[k]).abs().max()) for k in initial if k in a)
    assert moved > 1e-3, f"{stage}: the weights barely moved ({moved}); the comparison would prove nothing"
    assert max_diff(a, b) <= TOLERANCE, f"{stage}: 2 processes differ from 1 by {max_diff(a, b)}"
    # only the main process logged, once per step, the same losses as the single process
    rows_one = [json.loads(x) for x in (final_one.parent / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(x) for x in (final_two.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
    for r1, r2 in zip(rows_one, rows_two):
        for key in ("train/loss", "objective/scores", "eval/loss", "eval/accuracy"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], abs=1e-5), (stage, key, r1["step"])
    assert any("eval/loss" in r for r in rows_two) == (stage == "dpo")
    if stage == "reward":  # held-out evaluation written once, by the main process
        eval_one, eval_two = (json.loads((f.parent / "eval.json").read_text()) for f in (final_one, final_two))
        assert eval_two["pairs"] == eval_one["pairs"] > 0
        assert eval_two["accuracy"] == pytest.approx(eval_one["accuracy"], abs=1e-6)


@pytest.mark.parametrize("stage", RESUMED)
def test_two_processes_stopped_and_resumed_equal_uninterrupted(stage, two_process_runs):
    two = two_process_runs["two"][stage]
    resumed = Path(two_process_runs["root"]) / "two" / f"{stage}_resumed"
    uninterrupted = Path(two["output_dir"])
    assert max_diff(weights(resumed / "final"), weights(uninterrupted / "final")) <= TOLERANCE
    last = sorted((resumed / "checkpoints").glob("step-*"))[-1]
    state = torch.load(last / "state.pt", weights_only=False)
    assert len(state["rng_per_rank"]) == 2  # each rank's RNG is kept
    def steps(folder):
        return [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()]

    assert steps(resumed) == steps(uninterrupted)  # no step logged twice, none missing
    # it continued: the rows of steps 0-2 (their timings too) are those the first launch wrote, where a
    # run started over would have written them again
    before = two_process_runs["logged_before_stop"][stage]
    assert [json.loads(x)["step"] for x in before][-1] == 2
    assert (resumed / "metrics.jsonl").read_text().splitlines()[: len(before)] == before


def test_running_score_statistics_cover_every_rank(two_process_runs, tiny_model_dir, one_torch_thread):
    one = configs(str(tiny_model_dir), two_process_runs["files"], two_process_runs["root"] / "one",
                  processes=1)["ppo_moments"]
    one_process("ppo", one)

    def moments(config):
        path = Path(config["output_dir"]) / "checkpoints" / "step-0000001" / "state.pt"
        return torch.load(path, weights_only=False)["modules"]["score_moments"]

    a, b = moments(one), moments(two_process_runs["two"]["ppo_moments"])
    assert a["count"] == b["count"] == 8  # both ranks' 4 scores, not one rank's
    assert b["mean"] == pytest.approx(a["mean"], abs=1e-6) and b["var"] == pytest.approx(a["var"], abs=1e-6)
