"""What ``rlhfkit eval`` measures on a policy's own samples: the prompt file, the seeded samples
(cached per policy), token entropy and KL to a reference. Not here: judging and eval.json
(:mod:`rlhfkit.evaluate.policy_eval`), the pure metrics (:mod:`rlhfkit.evaluate.metrics`).

A policy's samples are kept in ``samples/<label>.json`` with a key: the sha256 of the model folder
(its resolved path and each top-level file's name, size and modification time), the prompts, and the
sampling settings (n, max_new_tokens, temperature, top_p, seed, batch_size: the batch decides which
random numbers each row draws). A rerun with the same key reads the file instead of sampling; any
change resamples and overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from rlhfkit.data.records import DataError, iter_jsonl, validate_prompt
from rlhfkit.data.tokenize import encode_prompt, pad_batch
from rlhfkit.evaluate.policy import sequence_kl
from rlhfkit.models.forward import sequence_logprobs
from rlhfkit.rollout.sample import generate_texts

log = logging.getLogger(__name__)


@dataclass
class PolicyRun:
    """One policy's samples on the evaluation prompts."""

    label: str
    folder: str
    key: str
    prompts: list
    responses: list[list[str]]  # (n_prompts, n_samples)
    response_ids: list[list[list[int]]]  # the sampled tokens (EOS included), for exact log-probs
    entropy: tuple[list[float], list[int]] | None = None  # per sample: Σ_t H_t and the token count

    def flat(self) -> tuple[list, list[str]]:
        """(prompt, response) of every sample, the prompt repeated once per sample."""
        return [p for p, rs in zip(self.prompts, self.responses) for _ in rs], [r for rs in self.responses for r in rs]

    def lengths(self) -> list[list[int]]:
        """Whitespace words per response, grouped by prompt (as :func:`metrics.mean_length` counts)."""
        return [[len(r.split()) for r in rs] for rs in self.responses]


# ---------------------------------------------------------------- 1. prompts


def load_eval_prompts(path: str, *, limit: int | None = None) -> list:
    """Prompts of a JSONL file: ``{"prompt": text or messages}`` or a chat ``{"messages": [...]}``
    (trailing assistant messages, a reference answer, are dropped). A bad record is a DataError
    naming the file, the line and the field."""
    file = Path(path)
    if not file.exists():
        raise DataError(path, None, None, "file does not exist")
    prompts = []
    for number, record in iter_jsonl(file):
        if "prompt" not in record and "messages" in record:
            messages = record["messages"]
            try:
                validate_prompt({"prompt": messages}, path, number)
            except DataError as err:  # checked as a prompt: name the field the file has
                prefix = f"{path}:{number}: field '{err.field}': "
                message = str(err)[len(prefix):] if str(err).startswith(prefix) else str(err)
                raise DataError(path, number, "messages" + (err.field or "prompt")[len("prompt"):], message) from None
            while messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            if not messages:
                raise DataError(path, number, "messages", "holds only assistant messages: no prompt")
            prompts.append(messages)
        else:
            prompts.append(validate_prompt(record, path, number)["prompt"])
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise DataError(path, None, None, "holds no prompt records")
    return prompts


def prompts_sha256(prompts: list) -> str:
    return hashlib.sha256(json.dumps(prompts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ---------------------------------------------------------------- 2. samples, cached


def folder_fingerprint(folder: str) -> dict:
    """The model folder as the cache key sees it: resolved path and its files' names, sizes and mtimes."""
    path = Path(folder)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json)")
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
    return {"path": str(path.resolve()), "files": files}


@lru_cache(maxsize=2)  # the policy being measured and the reference
def load_policy(folder: str):
    """(model in eval mode, tokenizer) of a policy folder."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    return load_causal_lm(folder).eval(), load_tokenizer(folder)


def sample_cached(label: str, folder: str, prompts: list, cache_dir: Path, *, n: int, max_new_tokens: int,
                  temperature: float, top_p: float, seed: int, batch_size: int) -> PolicyRun:
    """``n`` samples per prompt from ``folder``, read from ``cache_dir/<label>.json`` when its key
    matches these settings, else sampled (seeded) and written there."""
    settings = {"n": n, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                "seed": seed, "batch_size": batch_size}
    key = hashlib.sha256(json.dumps({"model": folder_fingerprint(folder), "prompts": prompts_sha256(prompts),
                                     **settings}, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"{label}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            log.info("%s: reusing %d x %d samples from %s", label, len(prompts), n, path)
            return PolicyRun(label, folder, key, prompts, cached["responses"], cached["response_ids"])
        log.info("%s: the model, prompts or sampling settings changed since %s: sampling again", label, path)
    model, tokenizer = load_policy(folder)
    responses, ids = generate_texts(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                                    return_ids=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "label": label, "folder": folder, "settings": settings,
                               "prompts": prompts, "responses": responses, "response_ids": ids}, ensure_ascii=False))
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache
    return PolicyRun(label, folder, key, prompts, responses, ids)


# ---------------------------------------------------------------- entropy and KL on the policy's own samples


@torch.no_grad()
def token_entropy(run: PolicyRun, *, temperature: float, batch_size: int) -> tuple[list[float], list[int]]:
    """Per sample, Σ_t H(π(· | x, y_<t)) over its sampled tokens and their count: the entropy of the
    distribution the sample was drawn from (logits / temperature), for :func:`metrics.mean_token_entropy`."""
    model, tokenizer = load_policy(run.folder)
    prompts, _ = run.flat()
    ids = [i for per_prompt in run.response_ids for i in per_prompt]
    sums, counts = [], []
    for start in range(0, len(prompts), batch_size):
        seqs, comp = [], []
        for p, resp in zip(prompts[start:start + batch_size], ids[start:start + batch_size]):
            prompt_ids = encode_prompt(tokenizer, p)
            seqs.append(prompt_ids + resp)
            comp.append([0] * len(prompt_ids) + [1] * len(resp))
        input_ids, mask = pad_batch(seqs, tokenizer.pad_token_id)
        completion, _ = pad_batch(comp, 0)
        _, entropy = sequence_logprobs(model, input_ids, mask, completion, temperature=temperature,
                                       return_entropy=True)  # (B, T-1), 0 off the completion
        sums += [float(v) for v in entropy.sum(-1)]
        counts += [int(v) for v in completion[:, 1:].sum(-1)]
    return sums, counts


def kl_by_prompt(run: PolicyRun, reference: str, *, temperature: float, batch_size: int) -> list[list[float]] | None:
    """Per prompt, the mean over its samples of Σ_t log π(y_t) − log π_ref(y_t) (``sequence_kl``, the
    k1 estimate of KL(π ‖ π_ref) per sequence, in nats). None when the reference's vocabulary differs."""
    model, tokenizer = load_policy(run.folder)
    ref_model, ref_tokenizer = load_policy(reference)
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        log.warning("%s: the reference %s has another vocabulary: no KL", run.label, reference)
        return None
    return [[sequence_kl(model, ref_model, tokenizer, [p] * len(rs), rs, response_ids=ids, batch_size=batch_size,
                         temperature=temperature)]
            for p, rs, ids in zip(run.prompts, run.responses, run.response_ids)]
