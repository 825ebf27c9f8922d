"""Reward-model folders and the one scoring API: a sequence classifier with one output, read at the
last real token. Here: loading (:func:`load_reward_model`, :func:`load_scorer`), the folder format
(bias, temperature, ``ensemble.json``, ``rlhfkit_scoring.json``) and :class:`RewardScorer`. Not here:
training one (:mod:`rlhfkit.train.reward_model`), RL's reward sources (:mod:`rlhfkit.train.rl.reward_sources`).

The one scoring API (:class:`RewardScorer`) is used by PPO, the judges, the feedback app and
evaluation. It encodes (prompt, response) exactly as training did (prompt ids, response ids, one
EOS, the same truncation policy), applies the stored normalisation bias, and for an ensemble
returns the members' mean and standard deviation.

Normalisation (InstructGPT, Ouyang et al. 2022 §C.3 "the reward model is normalised so that the
labeler demonstrations achieve a mean score of 0"): after training, ``rlhfkit_reward_bias`` =
−mean reward on a reference set is written into the model's ``config.json``; every consumer that
scores through this module sees the same scale. (A plain ``AutoModelForSequenceClassification``
user adds ``config.rlhfkit_reward_bias`` to the logit.)

Calibration (temperature scaling, Guo et al. 2017): ``rlhfkit_reward_temperature`` = T, fitted on
held-out pairs after training (:func:`rlhfkit.evaluate.metrics.fit_temperature`), sits next to the
bias in ``config.json`` (in ``ensemble.json`` for an ensemble, as T belongs to the members' mean).
It changes only calibrated probabilities: :meth:`RewardScorer.prefer_prob`, P(a ≻ b) = σ((r_a − r_b) / T),
and the reward-model judge, which divides its margins by the same ``temperature``; :meth:`RewardScorer.score` stays the raw (bias-normalised) reward that PPO, GRPO and RLOO
optimise, so a stored T never changes a policy's training signal. A folder without the key has T = 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.tokenize import TruncationStats, encode_completion, encode_prompt, fit_lengths, pad_batch
from rlhfkit.models.forward import last_token_scores

BIAS_KEY = "rlhfkit_reward_bias"
TEMPERATURE_KEY = "rlhfkit_reward_temperature"


REWARD_PAD = "<|rlhfkit_pad|>"


def with_distinct_pad(tokenizer):
    """The tokenizer a new reward model is trained and saved with: when pad == EOS (GPT-2, Llama-3,
    Mistral: no pad token of their own), it gets a pad token of its own. transformers' own pooling
    reads the last token that is not ``pad_token_id``; with pad == EOS that is the token BEFORE the
    final EOS, one position earlier than where rlhfkit trains and reads the score (from the mask)."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": REWARD_PAD})
    return tokenizer


def load_reward_model(path: str | Path, *, lora=None, tokenizer=None):
    """A sequence classifier with num_labels=1, from a reward model folder or a causal LM folder
    (then the score head is new and initialised by transformers). With ``tokenizer``, the embeddings
    grow to hold its added tokens (see :func:`with_distinct_pad`) and its pad id goes in the config."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.loading import apply_lora, quiet_transformers

    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    if tokenizer is not None:
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.config.pad_token_id is None:
        from rlhfkit.models.loading import load_tokenizer

        model.config.pad_token_id = load_tokenizer(path).pad_token_id
    if lora is not None and lora.r > 0:
        model = apply_lora(model, lora, task_type="SEQ_CLS")
    return model


def frozen_lm_head(model, init_path: str | Path) -> torch.Tensor | None:
    """The LM head GRM's regulariser predicts tokens with (Yang et al. 2024 keep the base model's LM head
    beside the reward head), when it is not the model's own: None for tied embeddings (then the head is
    the model's input embeddings, trained with it, and under LoRA frozen; a trainer reads them inside
    each step, where a sharded model has them whole); otherwise the (V, H) ``lm_head`` of the causal LM
    at ``init_path``, frozen: the regulariser keeps the hidden states readable by the head they started
    with, and the saved reward model carries no second head."""
    if getattr(model.config, "tie_word_embeddings", False):
        return None
    weight = _saved_lm_head(Path(init_path))
    if weight is None:
        raise ConfigError(f"lm_loss_coef > 0 needs an LM head: {init_path} has untied embeddings and no lm_head "
                          "weights (a reward model folder?); start from the causal LM, or set lm_loss_coef=0")
    embed = model.get_input_embeddings().weight
    return weight.to(device=embed.device, dtype=embed.dtype).requires_grad_(False)


def _saved_lm_head(folder: Path) -> torch.Tensor | None:
    """``*lm_head.weight`` from a folder's safetensors (one file or an index of shards), else None."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: folder / file for name, file in weight_map.items()}
    elif (folder / "model.safetensors").exists():
        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            files = {name: folder / "model.safetensors" for name in handle.keys()}
    else:
        return None
    name = next((n for n in files if n == "lm_head.weight" or n.endswith(".lm_head.weight")), None)
    if name is None:
        return None
    with safe_open(str(files[name]), framework="pt") as handle:
        return handle.get_tensor(name)


def reward_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward of each sequence, read at its last real token (chosen from the attention mask,
    so pad == EOS is safe). (B, T) -> (B,). See :func:`rlhfkit.models.forward.last_token_scores`."""
    return last_token_scores(model, input_ids, attention_mask)


def encode_pair_texts(tokenizer, prompt, response, *, max_length: int, max_prompt_length: int | None,
                      stats: TruncationStats | None = None) -> list[int]:
    """Token ids of prompt + response + EOS under the shared truncation policy."""
    stats = stats or TruncationStats()
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = encode_completion(tokenizer, prompt, response)
    fitted = fit_lengths(prompt_ids, response_ids, max_length=max_length, max_prompt_length=max_prompt_length,
                         stats=stats)
    return fitted[0] + fitted[1]


class RewardScorer:
    """Batched, no-grad scoring: ``score(prompts, responses) -> (N,)``; ``score_with_std`` for ensembles;
    ``prefer_prob(prompts, a, b) -> (N,)`` calibrated P(a ≻ b) with the stored ``temperature``."""

    def __init__(self, models: list, tokenizer, *, max_length: int = 512, max_prompt_length: int | None = None,
                 batch_size: int = 64, biases: list[float] | None = None, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.models, self.tokenizer = models, tokenizer
        self.max_length, self.max_prompt_length, self.batch_size = max_length, max_prompt_length, batch_size
        self.biases = biases or [float(getattr(m.config, BIAS_KEY, 0.0) or 0.0) for m in models]
        self.temperature = float(temperature)

    @property
    def ensemble_size(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def member_scores(self, prompts: list, responses: list) -> torch.Tensor:
        """(K, N) rewards of every member, normalisation bias applied."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        seqs = [encode_pair_texts(self.tokenizer, p, r, max_length=self.max_length,
                                  max_prompt_length=self.max_prompt_length) for p, r in zip(prompts, responses)]
        out = torch.zeros(len(self.models), len(seqs))
        # longest first keeps padding low inside each batch
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], self.tokenizer.pad_token_id)
            for k, model in enumerate(self.models):
                device = next(model.parameters()).device
                was_training = model.training
                model.eval()
                out[k, idx] = reward_forward(model, ids.to(device), mask.to(device)).float().cpu() + self.biases[k]
                model.train(was_training)
        return out

    def score(self, prompts: list, responses: list) -> torch.Tensor:
        """(N,) raw reward (the ensemble mean when there are several members); the temperature is not applied."""
        return self.member_scores(prompts, responses).mean(0)

    def prefer_prob(self, prompts: list, responses_a: list, responses_b: list) -> torch.Tensor:
        """(N,) calibrated P(a ≻ b) = σ((r_a − r_b) / T), every a and b scored in one call."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} responses a, {len(responses_b)} responses b")
        n = len(prompts)
        rewards = self.score(list(prompts) * 2, list(responses_a) + list(responses_b))
        return torch.sigmoid((rewards[:n] - rewards[n:]) / self.temperature)

    def score_with_std(self, prompts: list, responses: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) mean and (N,) standard deviation over the ensemble members (0 for one member)."""
        scores = self.member_scores(prompts, responses)
        std = scores.std(0, unbiased=False) if scores.shape[0] > 1 else torch.zeros(scores.shape[1])
        return scores.mean(0), std


def is_reward_folder(path: str | Path) -> bool:
    """A reward model folder (sequence classifier, or carries rlhfkit's reward bias) or an ensemble."""
    path = Path(path)
    if (path / "ensemble.json").exists():
        return True
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json or ensemble.json)")
    config = json.loads(config_file.read_text())
    return BIAS_KEY in config or any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def member_dirs(path: str | Path) -> list[Path]:
    """The member folders of a reward model folder (itself, or those listed in ensemble.json)."""
    path = Path(path)
    manifest = path / "ensemble.json"
    if manifest.exists():
        return [path / m for m in json.loads(manifest.read_text())["members"]]
    return [path]


def _calibration_file(path: Path) -> Path:
    """The file that holds a folder's temperature: ensemble.json for an ensemble, else config.json."""
    return path / "ensemble.json" if (path / "ensemble.json").exists() else path / "config.json"


def read_temperature(path: str | Path) -> float:
    """The stored temperature T of a reward model (or ensemble) folder; 1.0 when none is stored."""
    return float(json.loads(_calibration_file(Path(path)).read_text()).get(TEMPERATURE_KEY, 1.0))


def write_temperature(path: str | Path, temperature: float) -> None:
    """Store T in a reward model folder's config.json (an ensemble folder's ensemble.json)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = _calibration_file(Path(path))
    content = json.loads(target.read_text())
    content[TEMPERATURE_KEY] = float(temperature)
    target.write_text(json.dumps(content, indent=2))


def load_scorer(path: str | Path, *, max_length: int | None = None, batch_size: int = 64) -> RewardScorer:
    """Scorer for a reward model folder or an ensemble folder (``ensemble.json`` + members), with
    its stored biases and temperature."""
    from rlhfkit.models.loading import load_tokenizer

    dirs = member_dirs(path)
    models = [load_reward_model(d) for d in dirs]
    tokenizer = load_tokenizer(dirs[0])
    settings = {}
    settings_file = dirs[0] / "rlhfkit_scoring.json"
    if settings_file.exists():
        settings = json.loads(settings_file.read_text())
    return RewardScorer(models, tokenizer, max_length=max_length or settings.get("max_length", 512),
                        max_prompt_length=settings.get("max_prompt_length"), batch_size=batch_size,
                        temperature=read_temperature(path))
