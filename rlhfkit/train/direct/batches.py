"""The batches every direct method trains on: records → encoded examples, the batched completion
log-prob forward, and the reference log-prob cache. Not here: the methods' losses
(:mod:`rlhfkit.losses`, glued in :mod:`.dpo`, :mod:`.orpo`, :mod:`.simpo`, :mod:`.kto`) and the run
(:func:`rlhfkit.train.direct.preference.train_preference`).

An :class:`Example` holds named token sequences ("roles"): ``chosen`` and ``rejected`` for a pair,
``completion`` and ``kl`` (its prompt with another example's completion, KTO's reference point) for
an unpaired example. The reference log-prob of every sequence a run will use (the examples its
batches touch, and the held-out ones) is computed ONCE, before training, and stored in
``output_dir/reference_logps.pt`` under the hash of its token ids (:func:`sequence_key`), in a
namespace of the model and precision: a rerun, a resumed run or a longer one computes only the
sequences the file lacks, and training keeps no reference model in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from rlhfkit.data.layouts import LayoutOptions
from rlhfkit.data.records import DataError, at_record, load_records, preference_pairs
from rlhfkit.data.tokenize import TruncationStats, encode_completion, encode_prompt, fit_lengths, pad_batch
from rlhfkit.models.forward import sequence_logprobs
from rlhfkit.models.loading import is_peft

log = logging.getLogger("rlhfkit")

Seq = tuple[list[int], list[int]]
"""(prompt ids, completion ids) of one sequence, after the truncation policy"""


@dataclass
class Example:
    seqs: dict[str, Seq]
    """role → sequence: {"chosen", "rejected"} for a pair, {"completion", "kl"} for KTO"""
    label_prob: float | None = None
    """pairs: P(chosen ≻ rejected) from the record (None = a hard label)"""
    label: bool | None = None
    """unpaired: True = desirable"""

    def __len__(self) -> int:
        return sum(len(p) + len(c) for p, c in self.seqs.values())


@dataclass
class RoleLogps:
    """Completion log-probs of a batch of sequences of one role. Shapes: (B,)."""

    sum: Tensor
    count: Tensor

    @property
    def avg(self) -> Tensor:
        return self.sum / self.count.clamp(min=1)


# ---------------------------------------------------------------- records → examples


LINE = "record_line"
"""key under which a pair or unpaired example keeps the line of its source record (for errors)"""


def load_pair_records(path: str, *, ties: str = "skip", layout: LayoutOptions | None = None) -> list[dict]:
    """Pairwise view of a file of pairwise and/or ranking records (a ranking → its C(K,2) pairs),
    in any layout :mod:`rlhfkit.data.layouts` reads. Each pair keeps its record's line."""
    data = load_records(path, "preference", layout=layout)
    return [{**pair, LINE: data.lines[pair["group"]]} for pair in preference_pairs(data.records, ties=ties)]


def _unpaired(path: str, layout: LayoutOptions | None) -> list[dict]:
    data = load_records(path, "unpaired", layout=layout)
    return [{**record, LINE: line} for record, line in zip(data.records, data.lines)]


def load_unpaired_records(path: str, *, layout: LayoutOptions | None = None) -> list[dict]:
    """KTO data: ``{prompt, completion, label}`` records, or pairwise / ranking records split into a
    desirable (chosen) and an undesirable (rejected) example each (ties are skipped)."""
    if "label" in _first_record(path):
        return _unpaired(path, layout)
    if not Path(path).is_file():  # an HF dataset: unpaired if it has the unpaired columns
        try:
            return _unpaired(path, layout)
        except DataError as err:
            if err.field not in ("label", "completion"):
                raise
    out = []
    for pair in orient_pairs(load_pair_records(path, layout=layout))[0]:
        for role, label in (("chosen", True), ("rejected", False)):
            out.append({"prompt": pair["prompt"], "completion": pair[role], "label": label, "group": pair["group"],
                        LINE: pair[LINE]})
    return out


def _first_record(path: str) -> dict:
    if not Path(path).is_file():
        return {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return {}  # load_records reports it with the file and line
    return {}


def orient_pairs(pairs: list[dict]) -> tuple[list[dict], int]:
    """Hard labels from soft ones, for losses that take no ``label_prob``: a pair with
    label_prob < 0.5 is flipped, a tie (0.5) is dropped. Returns (pairs, number of ties dropped)."""
    out, ties = [], 0
    for pair in pairs:
        p = pair.get("label_prob")
        if p is None or p > 0.5:
            out.append({**pair, "label_prob": None})
        elif p < 0.5:
            out.append({**pair, "chosen": pair["rejected"], "rejected": pair["chosen"], "label_prob": None})
        else:
            ties += 1
    return out, ties


def _fit(tokenizer, prompt, prompt_ids, completion, *, max_length, max_prompt_length, stats) -> Seq:
    fitted = fit_lengths(prompt_ids, encode_completion(tokenizer, prompt, completion), max_length=max_length,
                         max_prompt_length=max_prompt_length, stats=stats)
    return fitted  # type: ignore[return-value]  # truncation="truncate" never skips


def encode_pairs(tokenizer, pairs: list[dict], *, max_length: int, max_prompt_length: int | None,
                 stats: TruncationStats, source: str = "<pairs>") -> list[Example]:
    """Encode pairs; one the chat template cannot render is a DataError naming ``source`` and its line."""
    out = []
    for pair in pairs:
        with at_record(source, pair.get(LINE)):
            prompt_ids = encode_prompt(tokenizer, pair["prompt"])
        seqs = {}
        for role in ("chosen", "rejected"):
            with at_record(source, pair.get(LINE), completion=role):
                seqs[role] = _fit(tokenizer, pair["prompt"], prompt_ids, pair[role], max_length=max_length,
                                  max_prompt_length=max_prompt_length, stats=stats)
        out.append(Example(seqs, label_prob=pair.get("label_prob")))
    return out


def encode_unpaired(tokenizer, records: list[dict], *, max_length: int, max_prompt_length: int | None,
                    stats: TruncationStats, seed: int, source: str = "<records>") -> list[Example]:
    """Each example also gets a FIXED mismatched sequence for KTO's reference point: its prompt with
    the completion of another record (a random cyclic derangement, deterministic in ``seed``), so
    the reference log-probs of those pairs can be cached like the others."""
    n = len(records)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    partner = {order[k]: order[(k + 1) % n] for k in range(n)}
    out = []
    for i, record in enumerate(records):
        kw = dict(max_length=max_length, max_prompt_length=max_prompt_length, stats=stats)
        with at_record(source, record.get(LINE)):
            prompt_ids = encode_prompt(tokenizer, record["prompt"])
            completion = _fit(tokenizer, record["prompt"], prompt_ids, record["completion"], **kw)
        other = records[partner[i]]
        with at_record(source, other.get(LINE)):  # another record's completion after this prompt
            kl = _fit(tokenizer, record["prompt"], prompt_ids, other["completion"], **kw)
        seqs = {"completion": completion, "kl": kl}
        out.append(Example(seqs, label=bool(record["label"])))
    return out


# ---------------------------------------------------------------- forward


def completion_logps(model, seqs: list[Seq], *, pad_token_id: int, device) -> RoleLogps:
    """Sum of log π(completion token) over each sequence's completion, and the token count; all
    sequences in ONE forward pass, the LM head only on completion positions. Shapes: (N,)."""
    ids, mask = pad_batch([p + c for p, c in seqs], pad_token_id)  # (N, T)
    completion, _ = pad_batch([[0] * len(p) + [1] * len(c) for p, c in seqs], 0)  # (N, T)
    per_token = sequence_logprobs(model, ids.to(device), mask.to(device), completion.to(device))  # (N, T-1)
    return RoleLogps(per_token.sum(dim=1), completion[:, 1:].sum(dim=1).to(device=device, dtype=per_token.dtype))


def batch_logps(model, examples: list[Example], roles: tuple[str, ...], *, pad_token_id: int,
                device) -> dict[str, RoleLogps]:
    """Every role of a batch in one concatenated forward pass (role-major: chosen..., rejected...)."""
    if not roles:
        return {}
    flat = completion_logps(model, [ex.seqs[role] for role in roles for ex in examples],
                            pad_token_id=pad_token_id, device=device)
    n = len(examples)
    return {role: RoleLogps(flat.sum[k * n:(k + 1) * n], flat.count[k * n:(k + 1) * n])
            for k, role in enumerate(roles)}


def reference_mode(model):
    """The reference policy: the model itself with its LoRA adapter disabled, or as it is (the
    caller runs this before any update, so the weights ARE the initial ones)."""
    return model.disable_adapter() if is_peft(model) else contextlib.nullcontext()


# ---------------------------------------------------------------- reference cache


@dataclass
class ReferenceLogps:
    """Reference log-probs of a run's examples: ``logps[split][role]`` = (N,) sums and ``counts`` the
    same; NaN for an example the run never uses (the cache computes only what the batches touch)."""

    logps: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    counts: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def select(self, split: str, indices: list[int], device) -> dict[str, RoleLogps]:
        index = torch.tensor(indices, dtype=torch.long)
        out = {role: RoleLogps(self.logps[split][role][index], self.counts[split][role][index])
               for role in self.logps[split]}
        if any(bool(torch.isnan(r.sum).any()) for r in out.values()):
            raise RuntimeError(f"reference log-probs of {split} examples {indices} were not computed: the batches "
                               f"drawn differ from those planned before training (rlhfkit.train.supervised.items_used)")
        return {role: RoleLogps(r.sum.to(device), r.count.to(device)) for role, r in out.items()}


def sequence_key(seq: Seq) -> str:
    """The cache key of one tokenised sequence: the sha256 of its (prompt ids, completion ids)."""
    return hashlib.sha256(json.dumps([list(seq[0]), list(seq[1])]).encode()).hexdigest()


def reference_namespace(*, model: str, precision: str) -> tuple[str, dict]:
    """What besides the tokens decides a reference log-prob: the model folder (path, its files' sizes
    and times) and the precision. Returns (its hash, the readable description)."""
    model_path = Path(model)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_path.glob("*") if p.is_file()) \
        if model_path.is_dir() else []
    meta = {"model": str(model_path.resolve()) if model_path.exists() else model, "model_files": files,
            "precision": precision}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest(), meta


CACHE_FORMAT = 2
"""2: one entry per sequence, keyed by its token hash (1 held whole splits under one key of model and data)"""


def load_reference_store(path: Path, namespace: str) -> dict[str, tuple[float, float]]:
    """sequence key → (sum of log-probs, completion tokens) stored under ``namespace``; empty when
    the file is missing, of an older format or of another model / precision."""
    if not path.exists():
        return {}
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != CACHE_FORMAT or blob.get("namespace") != namespace:
        log.info("%s holds reference log-probs of another model, precision or format; recomputing", path)
        return {}
    return dict(zip(blob["keys"], zip(blob["sums"].tolist(), blob["counts"].tolist())))


def save_reference_store(path: Path, namespace: str, meta: dict, store: dict[str, tuple[float, float]]) -> None:
    keys = sorted(store)
    blob = {"format": CACHE_FORMAT, "namespace": namespace, "meta": json.dumps(meta), "keys": keys,
            "sums": torch.tensor([store[k][0] for k in keys], dtype=torch.float64),
            "counts": torch.tensor([store[k][1] for k in keys], dtype=torch.float64)}
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # a crash mid-save leaves the previous file intact


@torch.no_grad()
def compute_reference(model, splits: dict[str, list[Example]], *, pad_token_id: int, device, batch_size: int,
                      autocast, needed: dict[str, list[int]] | None = None) -> ReferenceLogps:
    """Reference log-probs of every role of the ``needed`` examples of each split (default: all), in
    eval mode, no grad; NaN for the others.

    The batches are those of the whole split (each role's sequences sorted by length, cut into
    ``batch_size``), of which only the needed rows run, with the batch's longest row beside them:
    every row then has the padded width and company it has when the whole file runs, so a row's
    numbers are the same whichever others a run needs (in bf16 a batch of other rows changes a log-prob
    by up to ~0.03 nats; tests/stages/test_reference_modes.py)."""
    was_training = model.training
    model.eval()
    ref = ReferenceLogps()
    with reference_mode(model):
        for split, examples in splits.items():
            ref.logps[split], ref.counts[split] = {}, {}
            roles = list(examples[0].seqs) if examples else []
            wanted = None if needed is None else set(needed.get(split, []))
            for role in roles:
                seqs = [ex.seqs[role] for ex in examples]
                order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
                sums, counts = torch.full((len(seqs),), math.nan), torch.full((len(seqs),), math.nan)
                for start in range(0, len(order), batch_size):
                    chunk = order[start: start + batch_size]
                    if wanted is not None:
                        rows = [i for i in chunk if i in wanted]
                        if not rows:
                            continue
                        chunk = rows if chunk[-1] in wanted else rows + [chunk[-1]]  # + the longest: same width
                    with autocast():
                        out = completion_logps(model, [seqs[i] for i in chunk], pad_token_id=pad_token_id,
                                               device=device)
                    sums[chunk], counts[chunk] = out.sum.float().cpu(), out.count.float().cpu()
                ref.logps[split][role], ref.counts[split][role] = sums, counts
    model.train(was_training)
    return ref


def cached_reference(path: Path, *, namespace: str, meta: dict, splits: dict[str, list[Example]],
                     needed: dict[str, list[int]], compute) -> tuple[ReferenceLogps, int]:
    """The reference log-probs of the ``needed`` examples: those whose sequences the file at ``path``
    holds (under ``namespace``) are read from it, the rest computed by ``compute(missing)`` (a
    :func:`compute_reference` over ``{split: indices}``) and added to the file. Returns (reference,
    how many examples were computed). Examples computed now keep their own numbers (a sequence that
    occurs twice is computed twice, in its own batch), so a fresh run gives each example the number
    the precomputation of the whole file gives it."""
    store = load_reference_store(path, namespace)
    missing = {split: [i for i in needed.get(split, []) if any(sequence_key(seq) not in store
                                                               for seq in splits[split][i].seqs.values())]
               for split in splits}
    n_missing = sum(len(v) for v in missing.values())
    fresh = compute(missing) if n_missing else None
    ref = ReferenceLogps()
    for split, examples in splits.items():
        ref.logps[split], ref.counts[split] = {}, {}
        computed = set(missing[split])
        for role in (list(examples[0].seqs) if examples else []):
            sums, counts = torch.full((len(examples),), math.nan), torch.full((len(examples),), math.nan)
            for i in needed.get(split, []):
                key = sequence_key(examples[i].seqs[role])
                if i in computed:
                    sums[i], counts[i] = fresh.logps[split][role][i], fresh.counts[split][role][i]
                    store[key] = (float(sums[i]), float(counts[i]))
                else:
                    sums[i], counts[i] = store[key]
            ref.logps[split][role], ref.counts[split][role] = sums, counts
    if n_missing:
        save_reference_store(path, namespace, meta, store)
    return ref, n_missing
