"""The labeling app on a real loopback server: concurrent load, a crash mid-session, and the CLI loop.

The load and restart tests run on SQLite and on a real PostgreSQL server (``store_url`` in conftest.py)."""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager

import httpx
import pytest

from rlhfkit.feedback.app.cli import main, register
from rlhfkit.feedback.app.items import build_items
from rlhfkit.feedback.app.storage import SQLiteStorage, open_storage
from rlhfkit.feedback.app.testing import query, running_server

ADMIN = "admin-token-for-tests-0123456789"


def rows(sql, store):
    return [tuple(r.values()) for r in query(store, sql)]


def test_load_50_annotators_every_submission_stored_exactly_once(store, store_url):
    n_annotators, n_rounds, overlap = 50, 10, 2
    # 260 items: 50 × 10 labels need 250 places at overlap 2, so items run short only near the end
    records = [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"], "gold": None} for i in range(260)]
    project = store.create_project("load", mode="pairwise", items=build_items(records, "pairwise"), overlap=overlap)
    tokens = [store.add_annotator(project["id"], f"ann{i}")["token"] for i in range(n_annotators)]

    async def annotate(client, token, who):
        headers, sent = {"Authorization": f"Bearer {token}"}, []
        for round_ in range(n_rounds):
            item = (await client.get("/api/next", headers=headers)).json()["assignment"]
            body = {"idempotency_key": f"{who}-{round_}", "choice": "AB"[round_ % 2]}
            url = f"/api/assignments/{item['id']}/label"
            # a double click: the same submission twice at once
            first, second = await asyncio.gather(client.post(url, json=body, headers=headers),
                                                 client.post(url, json=body, headers=headers))
            assert sorted([first.status_code, second.status_code]) == [200, 201], (first.text, second.text)
            assert first.json()["submission"]["id"] == second.json()["submission"]["id"]
            sent.append((item["id"], first.json()["submission"]["id"]))
        return sent

    async def everyone(base):
        # idle connections expire on the client before uvicorn's 5 s keep-alive closes them: otherwise, on a
        # slow machine, a request can go out on a connection the server is closing (httpx.ReadError)
        limits = httpx.Limits(max_connections=n_annotators * 2, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(annotate(client, t, i) for i, t in enumerate(tokens)))

    # the server in a process of its own (``rlhfkit label serve``), so that it and these clients use two cores
    with cli_server(store_url) as (base, _):
        sent = [s for per_annotator in asyncio.run(everyone(base)) for s in per_annotator]

    db = store
    assert len(sent) == n_annotators * n_rounds
    stored = rows("SELECT id, assignment_id FROM submissions", db)
    assert sorted(sid for _, sid in sent) == sorted(sid for sid, _ in stored)  # each exactly once
    assert sorted(aid for aid, _ in sent) == sorted(aid for _, aid in stored)
    per_item = Counter(item for (item,) in rows("SELECT a.item_id FROM submissions s JOIN assignments a "
                                                "ON a.id = s.assignment_id", db))
    assert max(per_item.values()) <= overlap  # no item over-served, even under contention
    per_annotator = Counter(a for (a,) in rows("SELECT annotator_id FROM submissions", db))
    assert set(per_annotator.values()) == {n_rounds}
    if store.db.dialect == "sqlite":
        assert rows("PRAGMA journal_mode", db) == [("wal",)]


@contextmanager
def cli_server(db, kill=signal.SIGTERM):
    """``rlhfkit label serve`` in a subprocess on a free loopback port; yields (base URL, printed lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.feedback.app.cli", "serve", "--db", str(db), "--port", "0",
                             "--admin-token", ADMIN, "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("Ctrl-C")):
            line = proc.stdout.readline()
            assert line, "the server exited: " + "".join(lines)
            lines.append(line)
        base = lines[0].split(" on ")[1].strip()
        for _ in range(200):  # wait until it answers
            try:
                httpx.get(base + "/api/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield base, lines
    finally:
        proc.send_signal(kill)
        proc.wait(10)
        proc.stdout.close()


def test_restart_mid_session_loses_nothing(tmp_path, store_url):
    db = store_url
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps({"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]}) + "\n"
                             for i in range(6)))
    assert main(["create-project", "--db", str(db), "--name", "demo", "--candidates", str(cands)]) == 0
    assert main(["add-annotator", "--db", str(db), "--project", "demo", "--name", "alice"]) == 0
    opened = open_storage(db)
    token = opened.annotators(1)[0]["token"]
    opened.close()
    h = {"Authorization": f"Bearer {token}"}
    submitted = {}

    with cli_server(db, kill=signal.SIGKILL) as (base, lines):  # killed: no clean shutdown
        assert any(f"alice: {base}/label#token={token}" in line for line in lines)  # serve prints each link
        assert any(f"admin: {base}/admin#token={ADMIN}" in line for line in lines)
        with httpx.Client(base_url=base, headers=h) as c:
            for choice in ("A", "B", "tie"):
                item = c.get("/api/next").json()["assignment"]
                body = {"idempotency_key": f"k-{item['id']}", "choice": choice}
                assert c.post(f"/api/assignments/{item['id']}/label", json=body).status_code == 201
                submitted[item["prompt"]] = choice
            lost_reply = c.get("/api/next").json()["assignment"]  # the server dies before its reply arrives
            body = {"idempotency_key": "in-flight", "choice": "B"}
            assert c.post(f"/api/assignments/{lost_reply['id']}/label", json=body).status_code == 201
            submitted[lost_reply["prompt"]] = "B"
            pending = c.get("/api/next").json()["assignment"]

    with cli_server(db) as (base, _), httpx.Client(base_url=base, headers=h) as c:
        # the browser never saw the reply and retries: it counts once
        retry = c.post(f"/api/assignments/{lost_reply['id']}/label", json=body)
        assert retry.status_code == 200 and retry.json()["duplicate"] is True
        assert c.get("/api/next").json()["assignment"]["id"] == pending["id"]  # the same item comes back
        assert c.get("/api/me").json()["progress"] == {"done": 4, "skipped": 0, "left": 2}

    out = tmp_path / "prefs.jsonl"
    assert main(["export", "--db", str(db), "--project", "demo", "--pairwise", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    got = {r["prompt"]: ("tie" if r["label_prob"] == 0.5 else "A" if r["chosen"].startswith("a") else "B")
           for r in exported}
    assert got == submitted and all(r["annotator"] == ["alice"] for r in exported)


def test_cli_register_help_stats_and_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="rlhfkit")
    register(parser.add_subparsers(dest="command"))
    for command in ("serve", "create-project", "add-annotator", "export", "stats"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args(["label", command, "--help"])
        assert done.value.code == 0
    assert "--reward-model" in capsys.readouterr().out

    db, cands = tmp_path / "fb.sqlite", tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"prompt": "p", "responses": ["x", "y", "z"], "gold": [2, 1, 0]}) + "\n")
    args = parser.parse_args(["label", "create-project", "--db", str(db), "--name", "r", "--mode", "ranking",
                              "--candidates", str(cands)])
    assert args.func(args) == 0
    assert "1 items (1 gold)" in capsys.readouterr().out
    store = SQLiteStorage(db)
    ann = store.add_annotator(1, "ann")
    item = store.next_assignment(ann)
    store.submit(ann, item["id"], key="k", ranking=[2, 1, 0])
    stats_file = tmp_path / "stats.json"
    assert main(["stats", "--db", str(db), "--project", "r", "--output", str(stats_file)]) == 0
    report = json.loads(stats_file.read_text())
    assert report["gold_accuracy"] == 1.0 and report["annotators"][0]["done"] == 1
    printed = capsys.readouterr().out
    assert "labels per hour" in printed and "s per item" in printed
    assert report["annotators"][0]["timed_labels"] == 1 and len(report["annotators"][0]["daily"]) == 1
    rank_file = tmp_path / "rank.jsonl"
    assert main(["export", "--db", str(db), "--project", "1", "--ranking", str(rank_file)]) == 0
    assert json.loads(rank_file.read_text())["ranking"] == [2, 1, 0]

    capsys.readouterr()
    assert main(["export", "--db", str(db), "--project", "nope", "--ranking", str(rank_file)]) == 2
    assert capsys.readouterr().err.strip() == "error: no project 'nope'"
    cands.write_text('{"prompt": "p", "responses": ["x"]}\n')
    assert main(["create-project", "--db", str(db), "--name", "bad", "--candidates", str(cands)]) == 2
    assert f"{cands}:1: field 'responses'" in capsys.readouterr().err
    assert main(["create-project", "--db", str(db), "--name", "bad", "--prompts", str(cands)]) == 2
    assert main(["export", "--db", str(db), "--project", "r"]) == 2
    assert os.stat(db).st_mode & 0o077 == 0  # the database holds secrets: owner-only


def test_create_project_by_sampling_a_policy_scored_by_a_reward_model(tmp_path, tiny_model_dir):
    # the real rollout and reward-model code: K responses per prompt sampled from a tiny policy, and
    # a reward model (here: that same tiny model with a fresh scalar head) ordering the items
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "User: what color is the dax?\\nAssistant:"}\n'
                       '{"prompt": "User: where does the wug live?\\nAssistant:"}\n')
    db = tmp_path / "fb.sqlite"
    assert main(["create-project", "--db", str(db), "--name", "sampled", "--mode", "ranking", "--prompts",
                 str(prompts), "--policy", str(tiny_model_dir), "--k", "3", "--max-new-tokens", "8",
                 "--reward-model", str(tiny_model_dir)]) == 0
    items = SQLiteStorage(db).items(1)
    assert len(items) == 2 and all(len(i["responses"]) >= 2 and i["priority"] is not None for i in items)


@pytest.mark.slow
def test_export_feeds_rlhfkit_reward_and_dpo_unchanged(tmp_path, tiny_model_dir):
    from rlhfkit.cli import main as rlhfkit_main

    db = tmp_path / "fb.sqlite"
    store = SQLiteStorage(db)
    records = [{"prompt": "User: what color is the dax?\nAssistant:", "gold": None,
                "responses": ["the dax is red.", "the dax is blue!!!", "i don't know."]},
               {"prompt": "User: where does the wug live?\nAssistant:", "gold": None,
                "responses": ["the wug lives in the cave.", "in the sea."]}]
    project = store.create_project("e2e", mode="pairwise", items=build_items(records, "pairwise"),
                                   overlap=2, strength_scale=3)
    for name, choice in (("ann", "A"), ("bob", "tie")):
        who = store.add_annotator(project["id"], name)
        while (item := store.next_assignment(who)) is not None:
            store.submit(who, item["id"], key=str(item["id"]), choice=choice, strength=None if choice == "tie" else 2)
    prefs, ranks = tmp_path / "prefs.jsonl", tmp_path / "ranks.jsonl"
    assert main(["export", "--db", str(db), "--project", "e2e", "--pairwise", str(prefs), "--ranking", str(ranks)]) == 0
    assert {r["label_prob"] for r in map(json.loads, prefs.read_text().splitlines())} == {0.75}  # (1 + 0.5) / 2
    for stage, data in (("reward", prefs), ("reward", ranks), ("dpo", prefs)):
        out = tmp_path / f"{stage}-{data.stem}"
        assert rlhfkit_main([stage, f"model={tiny_model_dir}", f"data={data}", "max_steps=1", "batch_size=2",
                             f"output_dir={out}", "progress=false"]) == 0, (stage, data)
