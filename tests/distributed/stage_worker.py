"""One process of a multi-process run, launched by tests/distributed/test_*.py through
``torchrun --nproc_per_node 2 tests/distributed/stage_worker.py spec.json``.

spec.json: {"runs": [{"stage": "sft" | "dpo" | "reward" | "grpo" | "ppo", "config": {...}, "resume": bool,
"stop_at": step or null}, ...]}. The runs go one after another in the same processes (one launch
pays the interpreter and torch start-up once). ``stop_at`` stops a run right after it saved that
step's checkpoint, as a crash would (the same way as the ``stopped_at_checkpoint`` fixture), and the
worker goes on with the next run.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Stop(Exception):
    pass


def letters(prompts, responses):
    """GRPO's reward in these tests: the share of lower-case ASCII letters in the response."""
    return [sum(c.islower() and c.isascii() for c in r) / max(len(r), 1) for r in responses]


def run_one(spec: dict) -> None:
    import rlhfkit.train.run as run_module
    from rlhfkit.config import from_dict

    stage, resume = spec["stage"], spec.get("resume", False)
    if stage == "sft":
        from rlhfkit.train.sft import SFTConfig as cls, run_sft as run
    elif stage == "dpo":
        from rlhfkit.train.direct.dpo import DPOConfig as cls, run_dpo as run
    elif stage == "reward":
        from rlhfkit.train.reward_model import RewardConfig as cls, run_reward as run
    elif stage in ("grpo", "ppo"):
        from rlhfkit.train.rl.grpo import GRPOConfig, run_grpo
        from rlhfkit.train.rl.ppo import PPOConfig, run_ppo

        cls, method = (GRPOConfig, run_grpo) if stage == "grpo" else (PPOConfig, run_ppo)

        def run(config, resume):
            return method(config, resume=resume, reward_fns=[letters])
    else:
        raise ValueError(f"unknown stage {stage}")
    config = from_dict(cls, spec["config"])
    original = run_module.save_checkpoint
    if spec.get("stop_at"):
        def save_then_stop(*args, **kwargs):
            path = original(*args, **kwargs)
            if kwargs["state"].step == spec["stop_at"]:
                raise Stop
            return path

        run_module.save_checkpoint = save_then_stop
    try:
        run(config, resume=resume)
    except Stop:
        pass
    finally:
        run_module.save_checkpoint = original


def main() -> None:
    import torch

    torch.set_num_threads(1)
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    for one in spec["runs"]:
        run_one(one)


if __name__ == "__main__":
    main()
