"""The preference loop (DPO family, ORPO, SimPO, KTO) end to end on the tiny model: the step-0
invariants through the trainer's own forward, the reference cache, learning, gradient signs, resume."""

import json
import math
import random

import pytest
import torch

from rlhfkit.train.direct import batches as D
from rlhfkit.train.direct import preference as P
from rlhfkit.train.direct.dpo import dpo_objective
from rlhfkit.train.direct.kto import kto_objective
from rlhfkit.train.direct.orpo import orpo_objective
from rlhfkit.train.direct.simpo import simpo_objective
from rlhfkit.train.direct import (DPOConfig, KTOConfig, ORPOConfig, SimPOConfig, run_dpo, run_kto, run_orpo,
                                      run_simpo)
from rlhfkit.train.sft import OptimConfig

NAMES = ["dax", "wug", "zorp", "fep", "blick", "toma"]


def pair_rows(n, seed, label_prob=None):
    """Chosen answers say 'red', rejected ones 'blue'; every fifth a longer rejected answer (padding varies)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = rng.choice(NAMES)
        rejected = f" the {name} is blue." if i % 5 else f" it is blue, i think, the {name} is blue."
        row = {"prompt": f"User: what color is the {name}?\nAssistant:", "chosen": f" the {name} is red.",
               "rejected": rejected}
        if label_prob is not None:
            row["label_prob"] = label_prob
        rows.append(row)
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prefs(tmp_path):
    return write(tmp_path / "prefs.jsonl", pair_rows(60, seed=0))


def make(cls, model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(out), batch_size=8, max_length=48, max_steps=30,
                optim=OptimConfig(learning_rate=3e-3, warmup_ratio=0.0), log_every=1, save_every=0, progress=False,
                seed=1, precision="fp32")  # exact invariants are checked in fp32 (auto may pick bf16)
    base.update(kw)
    config = cls(**base)
    config.validate()
    return config


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_rows(out):
    return [m for m in metrics(out) if "train/loss" in m]


# ---------------------------------------------------------------- step-0 invariants


@pytest.mark.parametrize("kind, kw, expected", [
    # policy == reference: every log-ratio is 0, so h = 0 and
    ("dpo", {}, math.log(2)),                                         # −log σ(0) = log 2
    ("dpo-soft", {"label_prob": 0.8}, math.log(2)),                   # −0.8 log σ(0) − 0.2 log σ(0) = log 2
    ("dpo-accum", {"gradient_accumulation_steps": 3, "batch_size": 5}, math.log(2)),
    ("dpo-lora-cached", {"lora": {"r": 4}}, math.log(2)),
    ("dpo-lora-adapter-off", {"lora": {"r": 4}, "precompute_ref_logps": False}, math.log(2)),
    ("ipo", {"loss_type": "ipo", "beta": 0.5}, 1.0),                  # (0 − 1/(2·0.5))² = 1
    ("hinge", {"loss_type": "hinge"}, 1.0),                           # relu(1 − 0) = 1
    ("kto", {}, 0.5),                                                 # z0 = 0: 1 − σ(0) = 0.5
])
def test_policy_equals_reference_at_the_first_step(tiny_model_dir, tmp_path, kind, kw, expected):
    from rlhfkit.models.loading import LoraSettings

    kw = dict(kw)
    label_prob = kw.pop("label_prob", None)
    if "lora" in kw:
        kw["lora"] = LoraSettings(**kw["lora"])
    data = write(tmp_path / "p.jsonl", pair_rows(40, seed=2, label_prob=label_prob))
    cls, run = (KTOConfig, run_kto) if kind == "kto" else (DPOConfig, run_dpo)
    out = tmp_path / kind
    run(make(cls, tiny_model_dir, data, out, max_steps=1, **kw))
    first = train_rows(out)[0]  # step 1 is logged from the forward BEFORE the first update
    assert first["train/loss"] == pytest.approx(expected, abs=1e-5)
    for key in ("train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins"):
        assert first[key] == pytest.approx(0.0, abs=1e-5), key
    if kind == "kto":
        assert first["train/kl"] == pytest.approx(0.0, abs=1e-4)  # float noise of padded batches, clamped ≥ 0


@pytest.mark.parametrize("disable", [True, False])
def test_dropout_is_off_by_default_so_step_0_rewards_are_zero(tiny_model_dir, tmp_path, disable):
    # A model with attention dropout 0.5: in training mode with dropout on, the policy's log-probs
    # differ from the reference's (computed once, in eval mode) although the weights are equal, so
    # the implicit rewards of step 0 are noise; disable_dropout (the default, as in TRL) makes them 0.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attention_dropout=0.5)
    model.save_pretrained(tmp_path / "dropout")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "dropout")
    data = write(tmp_path / "p.jsonl", pair_rows(40, seed=2))
    out = tmp_path / "dpo"
    run_dpo(make(DPOConfig, tmp_path / "dropout", data, out, max_steps=1, disable_dropout=disable))
    first = train_rows(out)[0]
    margins = abs(first["train/rewards/chosen"]) + abs(first["train/rewards/rejected"])
    if disable:
        assert margins == pytest.approx(0.0, abs=1e-5) and first["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
    else:  # the old behaviour, kept behind the flag: dropout noise in the implicit rewards
        assert margins > 1e-3
    # the saved folder keeps the model's own dropout setting
    assert AutoModelForCausalLM.from_pretrained(out / "final").config.attention_dropout == 0.5


# ---------------------------------------------------------------- the reference cache


def fresh_logps(model, seq):
    """Sum of log p(completion tokens), one unpadded sequence, the full-logits forward (no shortcuts)."""
    prompt, completion = seq
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # (T-1, V)
    token = logp.gather(1, ids[0, 1:, None])[:, 0]
    return float(token[len(prompt) - 1:].sum())


def test_cached_reference_equals_fresh_and_is_reused(tiny_model_dir, prefs, tmp_path, monkeypatch):
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.train.supervised import items_used

    out = tmp_path / "dpo"
    config = make(DPOConfig, tiny_model_dir, prefs, out, max_steps=2)
    run_dpo(config)
    splits, _ = P.load_splits(config, dpo_objective(config), load_tokenizer(tiny_model_dir))
    assert len(splits["eval"]) == 3  # 5% of 60 records held out
    # only what the run uses: its 2 batches of at most 8 pairs (of 57 train pairs) and the 3 held-out pairs
    used = items_used(config, [len(ex) for ex in splits["train"]], world=1)
    assert 0 < len(used) <= 16 and metrics(out)[0]["data/reference_computed"] == len(used) + 3
    namespace, _ = D.reference_namespace(model=str(tiny_model_dir), precision=config.precision)
    store = D.load_reference_store(out / P.REFERENCE_FILE, namespace)
    model = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():
        for split, indices in (("train", used), ("eval", [0, 1, 2])):
            for role in ("chosen", "rejected"):
                seqs = [splits[split][i].seqs[role] for i in indices]
                cached = torch.tensor([store[D.sequence_key(seq)][0] for seq in seqs])
                fresh = torch.tensor([fresh_logps(model, seq) for seq in seqs])
                assert torch.allclose(cached, fresh, atol=1e-4), (split, role)
                counts = torch.tensor([store[D.sequence_key(seq)][1] for seq in seqs])
                assert torch.equal(counts, torch.tensor([float(len(seq[1])) for seq in seqs]))
    # nothing else: the file holds exactly the distinct sequences of those pairs
    wanted = {D.sequence_key(seq) for split, indices in (("train", used), ("eval", [0, 1, 2]))
              for i in indices for seq in splits[split][i].seqs.values()}
    assert set(store) == wanted

    # a rerun reuses the cache; a longer run computes only the pairs it adds; another length setting recomputes
    def fail(*args, **kwargs):
        raise AssertionError("reference recomputed although the cache matches")

    compute = D.compute_reference
    monkeypatch.setattr(D, "compute_reference", fail)
    run_dpo(config)
    assert metrics(out)[0]["data/reference_from_cache"] == 1
    with pytest.raises(AssertionError, match="recomputed"):
        run_dpo(make(DPOConfig, tiny_model_dir, prefs, out, max_steps=2, max_length=40))
    monkeypatch.setattr(D, "compute_reference", compute)
    longer = make(DPOConfig, tiny_model_dir, prefs, out, max_steps=4)
    run_dpo(longer)
    more = items_used(longer, [len(ex) for ex in splits["train"]], world=1)
    new = [i for i in more if any(D.sequence_key(seq) not in store for seq in splits["train"][i].seqs.values())]
    assert set(new) <= set(more) - set(used) and new  # pairs repeated in the data are cached already
    assert metrics(out)[0]["data/reference_computed"] == len(new)


def test_reference_free_methods_write_no_cache(tiny_model_dir, prefs, tmp_path):
    run_simpo(make(SimPOConfig, tiny_model_dir, prefs, tmp_path / "simpo", max_steps=1))
    assert not (tmp_path / "simpo" / P.REFERENCE_FILE).exists()


# ---------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpo", "ipo", "robust", "orpo", "simpo", "kto"])
def test_end_to_end_raises_the_margin(tiny_model_dir, prefs, tmp_path, kind):
    cls, run, kw = {
        "dpo": (DPOConfig, run_dpo, {}),
        "ipo": (DPOConfig, run_dpo, {"loss_type": "ipo", "beta": 0.5}),
        "robust": (DPOConfig, run_dpo, {"loss_type": "robust", "label_smoothing": 0.1}),
        "orpo": (ORPOConfig, run_orpo, {"lam": 1.0}),
        "simpo": (SimPOConfig, run_simpo, {}),
        "kto": (KTOConfig, run_kto, {}),
    }[kind]
    out = tmp_path / kind
    final = run(make(cls, tiny_model_dir, prefs, out, **kw))
    rows = train_rows(out)
    assert len(rows) == 30
    first, last = rows[0], rows[-1]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert f"train/{key}" in last, key
    assert last["train/loss"] < first["train/loss"]
    # chosen vs rejected: the implicit-reward margin and the raw log-prob gap both grow
    assert last["train/rewards/margins"] > first["train/rewards/margins"] + 0.05
    if kind != "kto":  # (KTO's batches hold unpaired examples: their raw gap depends on the draw)
        gap = lambda m: m["train/logps/chosen"] - m["train/logps/rejected"]  # noqa: E731
        assert gap(last) > gap(first)
    report = json.loads((out / "eval.json").read_text())
    assert report["eval/rewards/margins"] > 0
    if kind != "kto":
        assert last["train/rewards/accuracies"] >= 0.9 and report["eval/rewards/accuracies"] == 1.0
    assert (final / "config.json").exists() and (final / "tokenizer.json").exists()


# ---------------------------------------------------------------- gradient signs


def logps(values, requires_grad=True, count=4.0):
    s = torch.tensor(values, requires_grad=requires_grad)
    return D.RoleLogps(s, torch.full_like(s, count).detach())


@pytest.mark.parametrize("objective", [
    dpo_objective(DPOConfig(model="m", data="d")),
    dpo_objective(DPOConfig(model="m", data="d", loss_type="ipo")),
    dpo_objective(DPOConfig(model="m", data="d", loss_type="hinge")),
    dpo_objective(DPOConfig(model="m", data="d", loss_type="robust", label_smoothing=0.2)),
    orpo_objective(ORPOConfig(model="m", data="d")),
    simpo_objective(SimPOConfig(model="m", data="d")),
], ids=["dpo", "ipo", "hinge", "robust", "orpo", "simpo"])
def test_gradient_signs_of_pair_objectives(objective):
    # at policy == reference every loss wants chosen up and rejected down: d loss / d chosen < 0 < d / d rejected
    chosen, rejected = logps([-8.0, -5.0]), logps([-9.0, -6.0])
    ref = {"chosen": logps([-8.0, -5.0], False), "rejected": logps([-9.0, -6.0], False)}
    batch = [D.Example({}) for _ in range(2)]
    out = objective.loss({"chosen": chosen, "rejected": rejected}, ref if objective.reference else None, batch)
    out.losses.mean().backward()
    assert (chosen.sum.grad < 0).all() and (rejected.sum.grad > 0).all(), (chosen.sum.grad, rejected.sum.grad)


def test_soft_label_below_half_reverses_the_gradient():
    # dpo_loss with label p at h = 0: d loss / d h = β(σ(0) − p); p = 0.2 → +0.03 for chosen, p = 0.9 → −0.04
    objective = dpo_objective(DPOConfig(model="m", data="d", beta=0.1))
    chosen, rejected = logps([-8.0, -8.0]), logps([-9.0, -9.0])
    ref = {"chosen": logps([-8.0, -8.0], False), "rejected": logps([-9.0, -9.0], False)}
    batch = [D.Example({}, label_prob=0.2), D.Example({}, label_prob=0.9)]
    objective.loss({"chosen": chosen, "rejected": rejected}, ref, batch).losses.sum().backward()
    assert chosen.sum.grad.tolist() == pytest.approx([0.1 * (0.5 - 0.2), 0.1 * (0.5 - 0.9)])
    # losses without soft labels get oriented pairs: p < 0.5 flipped, ties dropped
    pairs, ties = D.orient_pairs([{"prompt": "p", "chosen": "a", "rejected": "b", "label_prob": 0.2},
                                  {"prompt": "p", "chosen": "a", "rejected": "b", "label_prob": 0.5},
                                  {"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert ties == 1 and [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "a"), ("a", "b")]


def test_gradient_signs_of_kto():
    # desirable: d loss / d log π < 0 (push up); undesirable: > 0 (push down); the KL pairs get no gradient
    objective = kto_objective(KTOConfig(model="m", data="d"))
    completion = logps([-8.0, -8.0])
    kl = logps([-10.0, -10.0], requires_grad=False)
    ref = {"completion": logps([-8.0, -8.0], False), "kl": logps([-10.0, -10.0], False)}
    batch = [D.Example({}, label=True), D.Example({}, label=False)]
    objective.loss({"completion": completion, "kl": kl}, ref, batch).losses.sum().backward()
    assert completion.sum.grad[0] < 0 < completion.sum.grad[1]


# ---------------------------------------------------------------- resume, data, CLI, warning


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_reuses_the_reference(tiny_model_dir, prefs, tmp_path, monkeypatch,
                                                               stopped_at_checkpoint):
    n = 5
    full = run_dpo(make(DPOConfig, tiny_model_dir, prefs, tmp_path / "full", max_steps=2 * n))
    half = make(DPOConfig, tiny_model_dir, prefs, tmp_path / "half", max_steps=2 * n, save_every=n)

    with stopped_at_checkpoint(n):
        run_dpo(half)
    monkeypatch.setattr(D, "compute_reference", lambda *a, **k: pytest.fail("--resume recomputed the reference"))
    resumed = run_dpo(half, resume=True)

    from safetensors.torch import load_file

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    steps = [m["step"] for m in train_rows(tmp_path / "half")]
    assert steps == list(range(1, 2 * n + 1))


def test_kto_reads_unpaired_records_through_the_cli(tiny_model_dir, tmp_path):
    from rlhfkit.cli import main

    rows = [{"prompt": f"User: what color is the {n}?\nAssistant:", "completion": f" the {n} is {c}.",
             "label": c == "red"} for n in NAMES for c in ("red", "blue", "red")]
    data = write(tmp_path / "kto.jsonl", rows)
    out = tmp_path / "kto"
    code = main(["kto", "--output-dir", str(out), f"model={tiny_model_dir}", f"data={data}", "max_steps=2",
                 "batch_size=4", "max_length=48", "progress=false", "log_every=1"])
    assert code == 0 and (out / "final" / "config.json").exists()
    first = metrics(out)[0]
    assert first["data/train_examples"] == 18 and first["data/eval_examples"] == 0
    # pairwise records split into one desirable and one undesirable example each
    split = D.load_unpaired_records(str(write(tmp_path / "p.jsonl", pair_rows(3, seed=0))))
    assert [r["label"] for r in split] == [True, False] * 3


def test_config_validation_names_the_field():
    from rlhfkit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(DPOConfig, None, ["model=m", "data=d", "loss_type=ipo", "label_smoothing=0.1"])
    # precompute_ref_logps=false without LoRA is allowed: a frozen copy of the model is the reference
    assert not load_config(KTOConfig, None, ["model=m", "data=d", "precompute_ref_logps=false"]).precompute_ref_logps
    with pytest.raises(ConfigError, match="loss_type"):
        load_config(DPOConfig, None, ["model=m", "data=d", "loss_type=exo"])


def test_falling_chosen_logps_warning(caplog):
    watch = P.ChosenLogpsWatch(block=2)
    for value in [0.0, 0.0, 0.01, -0.01, 0.02, 0.0, -0.01, 0.01]:  # noise around the start: silent
        watch.update(value)
    assert not watch.fired
    for value in [-0.05, -0.05, -0.1, -0.1, -0.2, -0.2]:  # three falling blocks, 0.2 nats/token down
        watch.update(value)
    assert watch.fired and "likelihood displacement" in caplog.text


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model gains nothing from intra-op threads, and on a shared CPU their spin-waits make
    # each step several times slower; restored for the rest of the session.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
