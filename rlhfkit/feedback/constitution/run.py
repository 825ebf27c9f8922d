"""``rlhfkit constitution``: Constitutional AI's data, both phases (Bai et al. 2022).

1. Supervised phase (sec. 3): the model answers each prompt, then critiques and revises its answer
   under randomly drawn principles -> ``cai_steps.jsonl`` (every step), ``sft.jsonl`` (final
   revisions: SL-CAI data for ``rlhfkit sft``) and ``revision_pairs.jsonl`` (revision ≻ initial).
2. Feedback phase (sec. 4): a policy (the SL-CAI model, say) samples ``feedback_samples`` responses
   per prompt and the judge compares them, each pair under a randomly drawn comparison principle ->
   ``feedback_prefs.jsonl`` (pairwise with ``label_prob``) for ``rlhfkit reward`` or ``rlhfkit dpo``.

Both phases are resumable: steps are appended prompt-chunk by prompt-chunk and judge labels pair by
pair, and a rerun continues where the last one stopped. A rerun checks that what it continues came
from the same prompts, ``n_revisions`` and judge, so two runs' data are never mixed without a word.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.config import require, save_config
from rlhfkit.data.records import DataError
from rlhfkit.feedback.judges.config import JudgeConfig

log = logging.getLogger(__name__)


@dataclass
class ConstitutionConfig:
    """Constitutional AI: critique → revision SFT data, then AI preference labels."""

    model: str = ""
    """the helpful model that answers, critiques and revises (a causal LM folder with a chat template)"""
    prompts: str = ""
    """JSONL of prompt records ({"prompt": text or messages})"""
    constitution: str | None = None
    """a constitution YAML file (None: rlhfkit's default constitution)"""
    output_dir: str = "runs/constitution"
    """run folder: cai_steps.jsonl, sft.jsonl, revision_pairs.jsonl, feedback_prefs.jsonl, summary.json"""
    n_revisions: int = 1
    """critique → revision rounds per prompt, each under a freshly drawn principle"""
    max_new_tokens: int = 64
    """longest response, critique or revision, in tokens"""
    temperature: float = 0.7
    """sampling temperature of every generation"""
    batch_size: int = 32
    """sequences per generation batch"""
    chunk_size: int = 128
    """prompts per chunk of the supervised phase (written to cai_steps.jsonl after each)"""
    max_prompts: int | None = None
    """use only the first N prompts (None: all)"""
    seed: int = 0
    """seed of the principle draws and of the sampling"""
    accept_if_judged_better: bool = False
    """keep a revision only when the judge prefers it to the response it revises (Bai et al. keep every
    revision; small models that rewrite good responses need the check)"""
    feedback: bool = True
    """run the feedback phase (needs comparison_principles in the constitution and a judge)"""
    feedback_policy: str | None = None
    """the policy whose samples the judge compares (None: `model`); Bai et al. use the SL-CAI model.
    Its samples are kept in feedback_candidates.jsonl: to compare another policy's, use a new output_dir"""
    feedback_samples: int = 2
    """responses per prompt in the feedback phase (every pair of them is judged)"""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """the feedback model (judge.kind, judge.model, judge.url, ...)"""

    def validate(self) -> None:
        require(bool(self.model), "model: the folder of the model that answers, critiques and revises")
        require(bool(self.prompts), "prompts: a JSONL file of prompt records")
        require(self.n_revisions >= 1, "n_revisions must be >= 1")
        require(self.batch_size >= 1 and self.chunk_size >= 1, "batch_size and chunk_size must be >= 1")
        require(self.feedback_samples >= 2, "feedback_samples must be >= 2")
        if self.feedback or self.accept_if_judged_better:
            self.judge.validate()


def run_constitution(config: ConstitutionConfig, *, resume: bool = False) -> Path:
    from rlhfkit.data.records import load_records, write_jsonl
    from rlhfkit.feedback.constitution.spec import ConstitutionError, load_constitution
    from rlhfkit.feedback.constitution.supervised import CAIExample, revision_pairs, sft_records

    config.validate()
    constitution = load_constitution(config.constitution)
    if config.feedback and not constitution.comparison_principles:
        raise ConstitutionError(f"{constitution.source}: comparison_principles is empty, but the feedback phase "
                                "needs them (or set feedback=false)")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    prompts = [r["prompt"] for r in load_records(config.prompts, "prompt", limit=config.max_prompts)]

    # 1. supervised phase
    steps_path = out / "cai_steps.jsonl"
    rows = _supervised_phase(config, constitution, prompts, steps_path)
    rows = sorted((r for r in rows if r["index"] < len(prompts)), key=lambda r: r["index"])  # max_prompts may shrink
    examples = [CAIExample(prompt=r["prompt"], initial=r["initial"], steps=r["steps"]) for r in rows]
    write_jsonl(sft_records(examples), out / "sft.jsonl")
    pairs = revision_pairs(examples)
    write_jsonl(pairs, out / "revision_pairs.jsonl")
    summary = {"constitution": constitution.name, "prompts": len(examples), "n_revisions": config.n_revisions,
               "revision_pairs": len(pairs),
               "revised_fraction": sum(e.final.strip() != e.initial.strip() for e in examples) / max(len(examples), 1),
               "mean_words_initial": _mean_words(e.initial for e in examples),
               "mean_words_final": _mean_words(e.final for e in examples)}
    if config.accept_if_judged_better:
        decided = [s["accepted"] for e in examples for s in e.steps if "accepted" in s]
        summary["accepted_revision_fraction"] = sum(decided) / max(len(decided), 1)

    # 2. feedback phase
    if config.feedback:
        summary["feedback"] = _feedback_phase(config, constitution, prompts, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("constitution: %s", json.dumps(summary))
    return out


def _supervised_phase(config: ConstitutionConfig, constitution, prompts: list, steps_path: Path) -> list[dict]:
    """Critique and revise the prompts not yet in ``steps_path``; returns every row, old and new."""
    from rlhfkit.feedback.constitution.supervised import critique_and_revise
    from rlhfkit.feedback.judging import journal_keys, read_journal

    saved = read_journal(steps_path)
    done = journal_keys(steps_path, saved, lambda r: r["index"])
    _check_saved_steps(steps_path, saved, prompts, config.n_revisions)
    rows = [r for _, r in saved]
    todo = [i for i in range(len(prompts)) if i not in done]
    if not todo:
        return rows
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(config.model), load_tokenizer(config.model)
    judge = None
    if config.accept_if_judged_better:
        from rlhfkit.feedback.judges import build_judge

        judge = build_judge(config.judge)
    log.info("constitution: critique and revision of %d prompts (%d already done)", len(todo), len(done))
    start = time.time()
    with steps_path.open("a", encoding="utf-8") as handle:
        for begin in range(0, len(todo), config.chunk_size):
            chunk = todo[begin: begin + config.chunk_size]
            examples = critique_and_revise(model, tokenizer, [prompts[i] for i in chunk], constitution,
                                           n_revisions=config.n_revisions, rng_seed=config.seed,
                                           max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                           batch_size=config.batch_size, seed_offset=chunk[0], accept_judge=judge)
            for i, example in zip(chunk, examples):
                rows.append({"index": i, **example.to_dict()})
                handle.write(json.dumps(rows[-1], ensure_ascii=False) + "\n")
            handle.flush()
            n = begin + len(chunk)
            log.info("constitution: %d/%d prompts revised (%.1f prompts/s)", n, len(todo), n / (time.time() - start))
    return rows


def _check_saved_steps(steps_path: Path, saved: list[tuple[int, dict]], prompts: list, n_revisions: int) -> None:
    """Continue only the steps of these prompts (by index) with this many rounds."""
    for number, row in saved:
        if row["index"] >= len(prompts):
            continue
        if row["prompt"] != prompts[row["index"]]:
            raise DataError(str(steps_path), number, "prompt", f"is not prompt {row['index']} of this run's "
                            "prompts: use another output_dir (or move the file away)")
        if len(row["steps"]) != n_revisions:
            raise DataError(str(steps_path), number, "steps", f"{len(row['steps'])} rounds, but n_revisions="
                            f"{n_revisions}: use another output_dir (or move the file away)")


def _feedback_phase(config: ConstitutionConfig, constitution, prompts: list, out: Path) -> dict:
    from rlhfkit.feedback.judges import build_judge
    from rlhfkit.feedback.judging import judge_candidates, label_stats, read_journal, sample_candidates

    items = sample_candidates(config.feedback_policy or config.model, prompts, out / "feedback_candidates.jsonl",
                              n=config.feedback_samples, max_new_tokens=config.max_new_tokens,
                              temperature=1.0, seed=config.seed + 1)
    if [item["prompt"] for item in items] != list(prompts):
        raise DataError(str(out / "feedback_candidates.jsonl"), None, None, "sampled for other prompts than this "
                        "run's (prompts or max_prompts changed): move it away to sample again")
    judge = build_judge(config.judge)
    prefs = out / "feedback_prefs.jsonl"
    principles = constitution.comparison_principles
    judge_candidates(judge, items, prefs, pairs="all", criteria=[p.text for p in principles],
                     principle_names=[p.name for p in principles], seed=config.seed)
    return {"judge": judge.name, "policy": config.feedback_policy or config.model,
            **label_stats([r for _, r in read_journal(prefs)])}


def _mean_words(texts) -> float:
    counts = [len(t.split()) for t in texts]
    return sum(counts) / len(counts) if counts else 0.0
