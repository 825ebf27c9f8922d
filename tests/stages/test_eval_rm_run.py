"""``rlhfkit eval-rm`` end to end on tiny reward model folders: a RewardBench-layout file with two
subsets, a best-of-K file, an ensemble of two folders, a stored temperature, and a bad record."""

import json

import pytest

from rlhfkit.cli import main
from rlhfkit.evaluate.metrics import pairwise_ece, sigmoid

KEYS = {"schema_version", "data", "rewards", "records", "responses", "subset_field", "length_unit", "precision",
        "accuracy", "pairs", "ties", "best_of_k_accuracy", "best_of_k_records", "accuracy_per_subset",
        "accuracy_per_annotator", "ece", "reliability", "temperature", "ece_temperature", "reliability_temperature",
        "length_correlation", "reward_mean", "members", "ensemble"}

COLORS = ["red", "blue", "green", "black"]
NAMES = ["dax", "wug", "zorp", "fep", "blick", "toma"]


def _prompt(name):
    return f"User: what color is the {name}?\nAssistant:"


def rewardbench_rows():
    rows = []
    for i, name in enumerate(NAMES):
        rows.append({"prompt": _prompt(name), "chosen": f" the {name} is {COLORS[i % 4]}.",
                     "rejected": f" it is {COLORS[(i + 1) % 4]}, i think, maybe, or not.",
                     "subset": "colors" if i < 3 else "hedging", "id": i,
                     "annotator": ["ann-a", "ann-b"] if i % 2 else "ann-a"})
    return rows


def best_of_k_rows(folder):
    """Four records of one chosen and three rejected, built from the model's own scores so the credits
    are known: chosen = the top-scored response (credit 1), the lowest (0), or the top response listed
    again among the rejected (2 tied at the top: 1/2)."""
    from rlhfkit.models.reward_model import load_scorer

    scorer = load_scorer(folder)
    rows = []
    for name, how in zip(NAMES, ["top", "top", "bottom", "tied"]):
        responses = [f" the {name} is {c}." for c in COLORS]
        scores = scorer.score([_prompt(name)] * 4, responses).tolist()
        ranked = [r for _, r in sorted(zip(scores, responses), reverse=True)]
        if how == "top":
            chosen, rejected = ranked[0], ranked[1:]
        elif how == "bottom":
            chosen, rejected = ranked[-1], ranked[:-1]
        else:
            chosen, rejected = ranked[0], [ranked[0]] + ranked[2:]
        rows.append({"prompt": _prompt(name), "chosen": [chosen], "rejected": rejected, "subset": "bok"})
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reward_folders(tiny_model_dir, tmp_path_factory):
    """Two untrained reward models (heads drawn with seeds 0 and 1: different, deterministic rewards);
    the second stores a temperature T = 2."""
    import torch

    from rlhfkit.models.loading import load_tokenizer, save_model
    from rlhfkit.models.reward_model import load_reward_model, with_distinct_pad, write_temperature

    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        tokenizer = with_distinct_pad(load_tokenizer(tiny_model_dir))
        model = load_reward_model(tiny_model_dir, tokenizer=tokenizer)
        folders.append(save_model(model, tokenizer, tmp_path_factory.mktemp("rm") / f"rm{seed}"))
    write_temperature(folders[1], 2.0)
    return folders


def _scores(folder, rows):
    """(chosen, [rejected...]) rewards of each row, straight from the scoring API."""
    from rlhfkit.models.reward_model import load_scorer

    scorer = load_scorer(folder)
    out = []
    for r in rows:
        chosen = r["chosen"] if isinstance(r["chosen"], list) else [r["chosen"]]
        rejected = r["rejected"] if isinstance(r["rejected"], list) else [r["rejected"]]
        s = scorer.score([r["prompt"]] * (len(chosen) + len(rejected)), chosen + rejected).tolist()
        out.append((s[: len(chosen)], s[len(chosen):]))
    return out


def _run(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["eval-rm", *args, "--output-dir", str(out), "batch_size=4", "precision=fp32"]) == 0
    return json.loads((out / "eval_rm.json").read_text())


def test_eval_rm_on_rewardbench_pairs(reward_folders, tmp_path, capsys, one_torch_thread):
    rows = rewardbench_rows()
    data = write(tmp_path / "rb.jsonl", rows)
    report = _run(tmp_path, "single", f"reward={reward_folders[0]}", f"data={data}")
    assert set(report) == KEYS
    assert report["records"] == 6 and report["pairs"] == 6 and report["best_of_k_records"] == 0
    assert report["ensemble"] is None and len(report["members"]) == 1
    scores = _scores(reward_folders[0], rows)
    right = [c[0] > r[0] for c, r in scores]
    assert report["accuracy"] == pytest.approx(sum(right) / 6)
    assert report["accuracy_per_subset"] == {
        "colors": {"accuracy": pytest.approx(sum(right[:3]) / 3), "n": 3},
        "hedging": {"accuracy": pytest.approx(sum(right[3:]) / 3), "n": 3}}
    # ann-a labelled every record, ann-b the odd ones
    assert report["accuracy_per_annotator"]["ann-a"]["n"] == 6
    assert report["accuracy_per_annotator"]["ann-b"] == {"accuracy": pytest.approx(sum(right[1::2]) / 3), "n": 3}
    assert report["ece"] == pytest.approx(pairwise_ece([sigmoid(c[0] - r[0]) for c, r in scores], [1.0] * 6), abs=1e-6)
    assert sum(b["count"] for b in report["reliability"]) == 12  # 6 pairs, both orders
    assert report["temperature"] is None and report["ece_temperature"] is None  # no T stored in folder 0
    assert -1.0 <= report["length_correlation"] <= 1.0
    printed = capsys.readouterr().out
    assert "colors" in printed and "hedging" in printed and "accuracy" in printed


def test_eval_rm_best_of_k_and_temperature(reward_folders, tmp_path, one_torch_thread):
    rows = best_of_k_rows(reward_folders[1])
    data = write(tmp_path / "bok.jsonl", rows)
    report = _run(tmp_path, "bok", f"reward={reward_folders[1]}", f"data={data}", "length_unit=tokens")
    assert report["best_of_k_records"] == 4 and report["pairs"] == 0 and report["accuracy"] is None
    # credits 1 (top), 1 (top), 0 (bottom), 1/2 (tied with itself at the top) -> 2.5 / 4
    assert report["best_of_k_accuracy"] == pytest.approx(2.5 / 4)
    assert report["accuracy_per_subset"] == {"bok": {"accuracy": pytest.approx(2.5 / 4), "n": 4}}
    scores = _scores(reward_folders[1], rows)
    # folder 1 stores T = 2: ECE after temperature uses σ(margin / 2) over the 4 × 3 chosen-rejected pairs
    margins = [c[0] - x for c, r in scores for x in r]
    assert report["temperature"] == 2.0
    assert report["ece_temperature"] == pytest.approx(pairwise_ece([sigmoid(m / 2) for m in margins], [1.0] * 12),
                                                      abs=1e-6)
    assert report["length_unit"] == "tokens"


def test_eval_rm_ensemble_of_two_folders(reward_folders, tmp_path, one_torch_thread):
    rows = rewardbench_rows()
    data = write(tmp_path / "rb.jsonl", rows)
    a, b = reward_folders
    report = _run(tmp_path, "ens", f"rewards={a},{b}", f"data={data}", "ensemble_lambda=0.5")
    assert set(report) == KEYS and report["rewards"] == [str(a), str(b)]
    sa, sb = _scores(a, rows), _scores(b, rows)
    members = report["members"]
    assert [m["reward"] for m in members] == [str(a), str(b)]
    assert members[0]["accuracy"] == pytest.approx(sum(c[0] > r[0] for c, r in sa) / 6)
    assert members[1]["accuracy"] == pytest.approx(sum(c[0] > r[0] for c, r in sb) / 6)
    assert members[1]["temperature"] == 2.0 and members[0]["temperature"] is None
    mean = [((ca[0] + cb[0]) / 2, (ra[0] + rb[0]) / 2) for (ca, ra), (cb, rb) in zip(sa, sb)]
    assert report["accuracy"] == pytest.approx(sum(c > r for c, r in mean) / 6)
    assert report["temperature"] is None  # no temperature belongs to the mean of two separate folders
    ens = report["ensemble"]
    assert ens["members"] == 2 and ens["lambda"] == 0.5
    # the members order a pair differently when the signs of their margins differ
    split = sum((ca[0] > ra[0]) != (cb[0] > rb[0]) for (ca, ra), (cb, rb) in zip(sa, sb)) / 6
    assert ens["pair_order_disagreement"] == pytest.approx(split)
    assert ens["reward_std_mean"] > 0 and set(ens["mean_minus_std"]) >= {"accuracy", "ece"}


def test_eval_rm_bad_record_names_file_line_and_field(reward_folders, tmp_path, capsys):
    rows = rewardbench_rows()
    rows[3]["rejected"] = ""
    data = write(tmp_path / "bad.jsonl", rows)
    code = main(["eval-rm", f"reward={reward_folders[0]}", f"data={data}", "--output-dir", str(tmp_path / "o")])
    assert code == 1
    assert f"{data}:4: field 'rejected': is empty" in capsys.readouterr().err
    assert main(["eval-rm", f"data={data}", "--output-dir", str(tmp_path / "o")]) == 2  # no reward folder


def test_eval_rm_ensemble_folder_counts_its_members(reward_folders, tmp_path, one_torch_thread):
    """An ensemble folder (ensemble.json, as `rlhfkit reward ensemble_size=2` writes it) is evaluated as
    an ensemble of its members, and the temperature in its ensemble.json belongs to their mean."""
    import shutil

    from rlhfkit.models.reward_model import write_temperature

    folder = tmp_path / "ens"
    for k, member in enumerate(reward_folders):
        shutil.copytree(member, folder / f"member-{k}")
    (folder / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-1"]}))
    write_temperature(folder, 1.5)
    data = write(tmp_path / "rb.jsonl", rewardbench_rows())
    report = _run(tmp_path, "ensfolder", f"reward={folder}", f"data={data}")
    assert [m["reward"] for m in report["members"]] == [str(folder / "member-0"), str(folder / "member-1")]
    assert report["ensemble"]["members"] == 2
    assert report["temperature"] == 1.5 and report["ece_temperature"] is not None
    pair = _run(tmp_path, "pair", f"rewards={reward_folders[0]},{reward_folders[1]}", f"data={data}")
    assert report["accuracy"] == pair["accuracy"] and report["ensemble"]["pair_order_disagreement"] == pair["ensemble"]["pair_order_disagreement"]


def test_eval_rm_help_lists_its_fields(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-rm", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("rewards (list", "subset_field", "ensemble_lambda", "length_unit"))
