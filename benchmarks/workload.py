"""The work both sides do: one tiny Llama, one set of data files, one reward function.

Everything is made by the harness from the built-in facts task (:class:`rlhfkit.tasks.FactsTask`) and
the offline tiny-model factory (:mod:`rlhfkit.models.tiny`), saved once under a cache folder, so both
sides load the same Hugging Face folder and read the same JSONL files. Nothing is downloaded.

The spec follows issue 13 §3: a ~6M-parameter Llama with a 4096-token vocabulary, batch 8, max length
128, fp32, 20 optimiser steps at a constant learning rate, AdamW (0.9, 0.999), no warm-up, no weight
decay; online RL: 4 generations per prompt, max_new_tokens 64, temperature 1, no KL (TRL's default
for GRPO, β = 0, kept for RLOO so that the two online methods do the same work).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

ALGOS = ("sft", "reward", "dpo", "orpo", "simpo", "kto", "grpo", "rloo", "ppo")
"""every algorithm the harness knows; ppo runs on rlhfkit only (TRL 1.16 has no PPO) and is compared
with TRL's GRPO at the same generated tokens"""
ONLINE = ("grpo", "rloo", "ppo")
TASK_SEED = 0


SHAPES = {
    "6m": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6, "num_attention_heads": 4,
           "num_key_value_heads": 2},
    # the model-FLOPs-utilisation target is set on a ~30M-parameter Llama (here 27.3M with the
    # 4096-row tied embedding): large enough that its matmuls, not the per-op overheads, set the time
    "30m": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
            "num_key_value_heads": 4},
}
"""model shapes ``benchmarks/run.py --model`` offers (vocabulary 4096 in both)"""


@dataclass(frozen=True)
class BenchSpec:
    """What both sides are asked to do; one value per knob, written into results.json."""

    steps: int = 20
    """optimiser steps per run"""
    batch_size: int = 8
    """examples (pairs, responses) per optimiser step"""
    max_length: int = 128
    """longest example in tokens (prompt + completion)"""
    max_prompt_length: int = 64
    """longest prompt in tokens (online RL; the offline data's prompts are far shorter)"""
    max_new_tokens: int = 64
    """generated tokens per response at most (online RL)"""
    num_generations: int = 4
    """responses per prompt (GRPO, RLOO): batch_size / num_generations prompts per step"""
    learning_rate: float = 1e-5
    """constant learning rate on both sides"""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    beta: float = 0.1
    """β of DPO and KTO (SimPO uses simpo_beta); ORPO's λ"""
    simpo_beta: float = 2.0
    simpo_gamma: float = 0.5
    kl_coef: float = 0.0
    """KL coefficient of GRPO / RLOO / PPO"""
    seed: int = 0
    # model shape: ~6M parameters (vocab 4096 × 256 tied embeddings + 6 layers)
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 2

    def as_dict(self) -> dict:
        return asdict(self)

    def with_shape(self, name: str) -> BenchSpec:
        """This spec with the model shape ``name`` of :data:`SHAPES`."""
        from dataclasses import replace

        return replace(self, **SHAPES[name])

    @classmethod
    def from_dict(cls, d: dict) -> BenchSpec:
        d = dict(d)
        d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)

    @property
    def examples(self) -> int:
        """Examples in each data file: one pass covers every step (no second epoch, whose order the
        two sides would draw differently), plus a spare batch."""
        return self.batch_size * (self.steps + 1)


@lru_cache(maxsize=1)
def _task():
    from rlhfkit.tasks import FactsTask

    return FactsTask.from_seed(TASK_SEED)


def gold_reward(prompts, completions, **_) -> list[float]:
    """The facts task's gold reward. One function for both sides: rlhfkit calls it as f(prompts,
    responses), TRL as f(prompts=..., completions=..., **columns)."""
    return [float(r) for r in _task().gold_batch(list(prompts), list(completions))]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _pairs(n: int) -> list[dict]:
    """{prompt, chosen, rejected}: two candidates of one prompt, the one with the higher gold reward chosen
    (candidates drawn until n pairs with different gold rewards)."""
    t = _task()
    pairs: list[dict] = []
    seed = 0
    while len(pairs) < n:
        for c in t.candidates(4 * n, rng_seed=seed):
            a, b = c["responses"]
            ga, gb = t.gold(c["prompt"], a), t.gold(c["prompt"], b)
            if ga != gb and len(pairs) < n:
                pairs.append({"prompt": c["prompt"], "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
        seed += 1
    return pairs


def prepare(cache_dir: str | Path, spec: BenchSpec) -> dict[str, str]:
    """Make (once) the model folders and data files of ``spec`` under ``cache_dir``; returns their paths.

    - ``model``: the tiny Llama (a causal LM), shared by every algorithm;
    - ``reward_init``: the same backbone with a score head initialised once (seed ``spec.seed``), so
      both sides' reward models and PPO's critic start from the same weights, head included;
    - ``sft.jsonl`` {prompt, completion}, ``pairs.jsonl`` {prompt, chosen, rejected}, ``unpaired.jsonl``
      {prompt, completion, label} (each pair's chosen True, rejected False, alternating), ``prompts.jsonl``.
    """
    key = f"v{spec.vocab_size}-h{spec.hidden_size}-i{spec.intermediate_size}-l{spec.num_hidden_layers}-" \
          f"a{spec.num_attention_heads}-k{spec.num_key_value_heads}-n{spec.examples}-s{spec.seed}"
    root = Path(cache_dir) / key
    paths = {"model": root / "model", "reward_init": root / "reward_init", "sft": root / "sft.jsonl",
             "pairs": root / "pairs.jsonl", "unpaired": root / "unpaired.jsonl", "prompts": root / "prompts.jsonl"}
    done = root / "DONE"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        _make(paths, spec)
        done.write_text(json.dumps(spec.as_dict()))
    return {k: str(v) for k, v in paths.items()}


def _make(paths: dict[str, Path], spec: BenchSpec) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.tiny import TinyModelSpec

    t = _task()
    tiny = TinyModelSpec(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                         intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
                         num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
                         max_position_embeddings=max(256, spec.max_length + spec.max_new_tokens))
    _tiny_llama(t.pretrain_corpus(2000), paths["model"], tiny, vocab_size=spec.vocab_size, seed=spec.seed)
    torch.manual_seed(spec.seed)
    rm = AutoModelForSequenceClassification.from_pretrained(paths["model"], num_labels=1)
    rm.config.pad_token_id = rm.config.pad_token_id if rm.config.pad_token_id is not None else rm.config.eos_token_id
    rm.save_pretrained(paths["reward_init"])
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(paths["model"]).save_pretrained(paths["reward_init"])
    n = spec.examples
    _write_jsonl(paths["sft"], t.sft_records(n, rng_seed=spec.seed))
    pairs = _pairs(n)
    _write_jsonl(paths["pairs"], pairs)
    rng = random.Random(spec.seed)
    unpaired = []
    for p in pairs:
        good = {"prompt": p["prompt"], "completion": p["chosen"], "label": True}
        bad = {"prompt": p["prompt"], "completion": p["rejected"], "label": False}
        unpaired.extend([good, bad] if rng.random() < 0.5 else [bad, good])
    _write_jsonl(paths["unpaired"], unpaired[:n])
    _write_jsonl(paths["prompts"], [{"prompt": p["prompt"]} for p in t.prompts(n, rng_seed=spec.seed)])


def _tiny_llama(texts: list[str], out_dir: Path, tiny, *, vocab_size: int, seed: int) -> None:
    """:func:`rlhfkit.models.tiny.create_tiny_model`, but with an embedding of ``vocab_size`` rows.

    The facts task's words saturate a BPE vocabulary well below 4096 tokens (about 770), so the
    tokenizer keeps what it learned and the model gets the issue's 4096-row embedding and LM head:
    every LM-head matmul and softmax then costs what a 4096-token vocabulary costs."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from rlhfkit.models.tiny import tiny_llama_config, train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = tiny_llama_config(tokenizer, tiny)
    config.vocab_size = max(vocab_size, len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def parameter_count(model_dir: str | Path, *, matmul_only: bool = False) -> int:
    """Parameters of the model in ``model_dir`` (a causal LM, or a sequence classifier for a reward
    model; tied embeddings counted once). ``matmul_only``: the N of 6·N FLOPs per token, without the
    input embedding when the model has no LM head to multiply by it (a lookup costs no FLOPs; a tied
    LM head does, so a causal LM keeps it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    classifier = any("SequenceClassification" in a for a in (config.architectures or []))
    with torch.device("meta"):
        model = (AutoModelForSequenceClassification if classifier else AutoModelForCausalLM).from_config(config)
    total = sum(p.numel() for p in model.parameters())
    if matmul_only and classifier:
        total -= model.get_input_embeddings().weight.numel()
    return total
