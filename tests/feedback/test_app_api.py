"""API tests for the labeling app: every endpoint, and every refusal (401 / 403 / 404 / 409 / 4xx, never 500).

Every test runs twice: on SQLite and on a real PostgreSQL server (the ``store`` fixture in conftest.py)."""

import json
import sys
import types

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback.app.server import create_app
from rlhfkit.feedback.app.testing import query

ADMIN = "admin-token-for-tests-0123456789"


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


CANDIDATES = jsonl([{"prompt": f"prompt {i}", "responses": [f"a{i}", f"b{i}"]} for i in range(4)]
                   + [{"prompt": "gold", "responses": ["good", "bad"], "gold": "A"}])


class App:
    def __init__(self, store, scorer=None):
        self.store = store
        self.client = TestClient(create_app(self.store, admin_token=ADMIN, scorer=scorer))

    def call(self, method, path, token=None, body=None, expect=200):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = self.client.request(method, path, headers=headers, json=body)
        assert r.status_code == expect, (r.status_code, r.text)
        if r.status_code >= 400:
            assert set(r.json()) == {"error"} and r.json()["error"], r.text
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def project(self, name="demo", expect=201, **settings):
        body = {"name": name, "mode": "pairwise", "candidates_jsonl": CANDIDATES, **settings}
        return self.call("POST", "/api/admin/projects", ADMIN, body, expect)

    def annotator(self, project, name):
        return self.call("POST", f"/api/admin/projects/{project}/annotators", ADMIN, {"name": name}, 201)["token"]

    def label(self, token, assignment, expect=201, key="k1", **body):
        return self.call("POST", f"/api/assignments/{assignment}/label", token,
                         {"idempotency_key": key, **body}, expect)


@pytest.fixture
def app(store):
    return App(store)


def submissions(app):
    return query(app.store, "SELECT COUNT(*) AS n FROM submissions")[0]["n"]


def test_pages_and_security_headers(app):
    for path in ("/", "/label", "/admin"):
        r = app.client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    assert app.client.get("/static/label.js").headers["content-type"].startswith("text/javascript")
    assert app.client.get("/static/style.css").headers["content-type"].startswith("text/css")
    app.call("GET", "/static/../storage.py", expect=404)
    app.call("GET", "/static/secrets.txt", expect=404)
    app.call("GET", "/no/such/page", expect=404)
    assert app.call("GET", "/api/health") == {"ok": True}
    # model output reaches the DOM as text, or as the server's sanitised HTML in exactly one place
    script = app.client.get("/static/label.js").text
    assert script.count("innerHTML") == 1 and "node.innerHTML = html;" in script
    assert "innerHTML" not in app.client.get("/static/admin.js").text


def test_admin_endpoints_refuse_everyone_but_the_admin(app):
    pid = app.project()["id"]
    alice = app.annotator(pid, "alice")
    admin_calls = [("GET", "/api/admin/projects"), ("POST", "/api/admin/projects"),
                   ("GET", f"/api/admin/projects/{pid}"), ("POST", f"/api/admin/projects/{pid}/annotators"),
                   ("GET", f"/api/admin/projects/{pid}/stats"), ("GET", f"/api/admin/projects/{pid}/export"),
                   ("POST", f"/api/admin/projects/{pid}/rescore")]
    for method, path in admin_calls:
        assert "Bearer" in app.call(method, path, None, {}, 401)["error"]
        assert app.call(method, path, alice, {}, 403)["error"] == "admin endpoints refuse annotator tokens"
        app.call(method, path, ADMIN[:-1] + "x", {}, 401)
    r = app.client.get("/api/admin/projects", headers={"Authorization": f"Basic {ADMIN}"})
    assert r.status_code == 401


def test_annotator_endpoints_refuse_other_tokens(app):
    pid = app.project()["id"]
    app.annotator(pid, "alice")
    for method, path in [("GET", "/api/me"), ("GET", "/api/next"), ("GET", "/api/assignments/1"),
                         ("POST", "/api/assignments/1/label"), ("POST", "/api/assignments/1/skip"),
                         ("POST", "/api/undo")]:
        app.call(method, path, None, {}, 401)
        assert "for annotators" in app.call(method, path, ADMIN, {}, 403)["error"]
        for bad in ("1.wrong-secret", "999.x", "nodot", "1."):
            assert app.call(method, path, bad, {}, 401)["error"] == "invalid annotator token"


def test_create_project_and_its_refusals(app, monkeypatch, tmp_path):
    project = app.project(overlap=2, strength_scale=3, guidelines="Prefer the honest answer.")
    assert (project["items"], project["gold_items"], project["overlap"]) == (5, 1, 2)
    assert app.call("GET", "/api/admin/projects", ADMIN)["projects"][0]["name"] == "demo"
    assert "exists already" in app.project(expect=409)["error"]
    assert "mode" in app.project("x", mode="votes", expect=422)["error"]
    assert "only digits" in app.project("123", expect=422)["error"]
    assert "strength_scale" in app.project("x", mode="ranking", strength_scale=3, expect=422)["error"]
    bad = CANDIDATES + '{"prompt": "p", "responses": ["same", "same"]}\n'
    message = app.project("x", candidates_jsonl=bad, filename="mine.jsonl", expect=422)["error"]
    assert message == "mine.jsonl:6: field 'responses[1]': is identical to responses[0]"
    assert "either" in app.project("x", policy_dir="/p", prompts_jsonl='{"prompt": "q"}', expect=422)["error"]
    assert "extra" in app.project("x", unknown_field=1, expect=422)["error"].lower()
    assert "overlap" in app.project("x", overlap=0, expect=422)["error"]
    r = app.client.post("/api/admin/projects", content=b"{not json", headers={
        "Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "the request body is not valid JSON"}
    # sampling K responses per prompt from a policy folder (the rollout API is faked here)
    fake = types.ModuleType("rlhfkit.rollout.sample")
    fake.sample_texts = lambda model_dir, prompts, *, n, max_new_tokens, temperature, seed: [
        [f"{p} #{j}" for j in range(n)] for p in prompts]
    monkeypatch.setitem(sys.modules, "rlhfkit.rollout.sample", fake)
    sampled = app.call("POST", "/api/admin/projects", ADMIN, {
        "name": "sampled", "mode": "ranking", "candidates_jsonl": None, "policy_dir": str(tmp_path),
        "prompts_jsonl": jsonl([{"prompt": "q1"}, {"prompt": "q2"}]), "k": 3}, 201)
    assert sampled["items"] == 2
    assert app.store.items(sampled["id"])[0]["responses"] == ["q1 #0", "q1 #1", "q1 #2"]


def test_annotators_detail_stats_export_endpoints(app):
    pid = app.project()["id"]
    created = app.call("POST", f"/api/admin/projects/{pid}/annotators", ADMIN, {"name": "alice"}, 201)
    assert created["link"] == f"/label#token={created['token']}"
    assert "exists already" in app.call("POST", f"/api/admin/projects/{pid}/annotators", ADMIN,
                                        {"name": "alice"}, 409)["error"]
    app.call("POST", f"/api/admin/projects/{pid}/annotators", ADMIN, {"name": ""}, 422)
    app.call("POST", "/api/admin/projects/404/annotators", ADMIN, {"name": "bob"}, 404)
    detail = app.call("GET", "/api/admin/projects/demo", ADMIN)  # by name or id
    assert detail["annotators"] == [{"id": created["id"], "name": "alice", "link": created["link"]}]
    assert detail["stats"]["annotators"][0]["done"] == 0
    app.call("GET", "/api/admin/projects/nope", ADMIN, expect=404)
    stats = app.call("GET", f"/api/admin/projects/{pid}/stats", ADMIN)
    assert stats["project"]["items"] == 5 and stats["alpha_ordinal"] is None
    assert app.call("GET", f"/api/admin/projects/{pid}/export?format=ranking", ADMIN) == ""
    assert "format" in app.call("GET", f"/api/admin/projects/{pid}/export?format=xml", ADMIN, expect=422)["error"]
    assert "reward model" in app.call("POST", f"/api/admin/projects/{pid}/rescore", ADMIN, expect=409)["error"]


def test_label_flow_idempotency_and_undo(app):
    pid = app.project(strength_scale=3, guidelines="Be kind.")["id"]
    alice = app.annotator(pid, "alice")
    me = app.call("GET", "/api/me", alice)
    assert me["annotator"] == "alice" and me["project"]["guidelines"] == "Be kind."
    assert me["progress"] == {"done": 0, "skipped": 0, "left": 5}
    first = app.call("GET", "/api/next", alice)["assignment"]
    assert set(first) == {"id", "status", "prompt", "responses", "html"}  # never the gold answer
    assert first["html"]["responses"] == [f"<p>{r}</p>\n" for r in first["responses"]]
    assert app.call("GET", "/api/next", alice)["assignment"]["id"] == first["id"]  # same pending item
    assert app.call("GET", f"/api/assignments/{first['id']}", alice)["prompt"] == first["prompt"]

    assert "strength" in app.label(alice, first["id"], 422, choice="A")["error"]
    assert "strength" in app.label(alice, first["id"], 422, choice="A", strength=4)["error"]
    assert "choice" in app.label(alice, first["id"], 422, choice="C", strength=1)["error"]
    assert "choice" in app.label(alice, first["id"], 422, ranking=[0, 1])["error"]
    assert "idempotency_key" in app.call("POST", f"/api/assignments/{first['id']}/label", alice,
                                         {"choice": "tie"}, 422)["error"]
    assert "strength" in app.label(alice, first["id"], 422, choice="A", strength="2")["error"]

    r = app.label(alice, first["id"], choice="B", strength=2)
    assert r["submission"]["ranking"] == [1, 0] and r["duplicate"] is False
    again = app.label(alice, first["id"], 200, choice="B", strength=2)  # a double click
    assert again["duplicate"] is True and again["submission"]["id"] == r["submission"]["id"]
    assert submissions(app) == 1
    assert "different submission" in app.label(alice, first["id"], 409, choice="A", strength=2)["error"]
    assert "undo it first" in app.label(alice, first["id"], 409, key="k2", choice="A", strength=1)["error"]

    second = app.call("GET", "/api/next", alice)["assignment"]
    assert second["id"] != first["id"]
    app.label(alice, second["id"], key="k3", choice="tie")
    undone = app.call("POST", "/api/undo", alice, {"idempotency_key": "u1"})
    assert undone["undone"]["assignment_id"] == second["id"] and undone["duplicate"] is False
    assert app.call("POST", "/api/undo", alice, {"idempotency_key": "u1"})["duplicate"] is True  # counts once
    assert app.call("GET", "/api/next", alice)["assignment"]["id"] == second["id"]  # served again
    app.label(alice, second["id"], key="k4", choice="A", strength=3)
    assert [(lab["ranking"], lab["strength"]) for lab in app.store.labels(pid)] == [([1, 0], 2), ([0, 1], 3)]
    assert app.call("GET", "/api/me", alice)["progress"] == {"done": 2, "skipped": 0, "left": 3}


def test_hostile_markdown_is_served_inert(app):
    rows = [{"prompt": [{"role": "user", "content": "Say <script>alert(1)</script>"}],
             "responses": ['<img src=x onerror="alert(1)">', "[run](javascript:alert(1))\n\n```\n<b>x</b>\n```"]}]
    pid = app.project("md", candidates_jsonl=jsonl(rows))["id"]
    item = app.call("GET", "/api/next", app.annotator(pid, "ann"))["assignment"]
    assert item["html"] == {
        "prompt": [{"role": "user", "html": "<p>Say &lt;script&gt;alert(1)&lt;/script&gt;</p>\n"}],
        "responses": ['<p>&lt;img src=x onerror="alert(1)"&gt;</p>\n',
                      "<p>[run](javascript:alert(1))</p>\n<pre><code>&lt;b&gt;x&lt;/b&gt;\n</code></pre>\n"]}
    assert item["responses"][0] == '<img src=x onerror="alert(1)">'  # the raw text, for the raw-text toggle


def test_skip_and_nothing_to_undo(app):
    pid = app.project()["id"]
    bob = app.annotator(pid, "bob")
    assert app.call("POST", "/api/undo", bob, {"idempotency_key": "u"}, 409)["error"] == "nothing to undo"
    item = app.call("GET", "/api/next", bob)["assignment"]
    path = f"/api/assignments/{item['id']}/skip"
    assert "reason" in app.call("POST", path, bob, {"idempotency_key": "s", "reason": ""}, 422)["error"]
    assert app.call("POST", path, bob, {"idempotency_key": "s", "reason": "cannot judge"}, 201)["duplicate"] is False
    assert app.call("POST", path, bob, {"idempotency_key": "s", "reason": "cannot judge"}, 200)["duplicate"] is True
    assert app.call("GET", "/api/me", bob)["progress"]["skipped"] == 1
    assert app.call("GET", "/api/next", bob)["assignment"]["id"] != item["id"]
    assert app.store.labels(pid) == []  # a skip is not a label


def test_annotators_cannot_touch_each_others_assignments(app):
    pid = app.project(overlap=1)["id"]
    alice, bob = app.annotator(pid, "alice"), app.annotator(pid, "bob")
    mine = app.call("GET", "/api/next", alice)["assignment"]
    theirs = app.call("GET", "/api/next", bob)["assignment"]
    assert mine["id"] != theirs["id"] and mine["prompt"] != theirs["prompt"]  # overlap 1: not the same item
    assert app.call("GET", f"/api/assignments/{mine['id']}", bob, expect=404)["error"].startswith("you have no")
    app.label(bob, mine["id"], 404, choice="A")
    app.call("POST", f"/api/assignments/{mine['id']}/skip", bob, {"idempotency_key": "s", "reason": "x"}, 404)
    app.label(alice, mine["id"], choice="A")
    app.call("POST", "/api/undo", bob, {"idempotency_key": "u"}, 409)  # bob's undo never reaches alice's label
    assert len(app.store.labels(pid)) == 1
    app.call("GET", "/api/assignments/999", alice, expect=404)
    assert "assignment_id" in app.call("GET", "/api/assignments/abc", alice, expect=422)["error"]


def test_ranking_project(app):
    rows = [{"prompt": "p", "responses": ["w", "x", "y", "z"]}]
    pid = app.project("rank", mode="ranking", candidates_jsonl=jsonl(rows))["id"]
    ann = app.annotator(pid, "ann")
    item = app.call("GET", "/api/next", ann)["assignment"]
    assert "leaves out" in app.label(ann, item["id"], 422, ranking=[0, 1, 2])["error"]
    assert "more than once" in app.label(ann, item["id"], 422, ranking=[0, 0, 1, 2, 3])["error"]
    assert "ranking" in app.label(ann, item["id"], 422, choice="A")["error"]
    assert "strength" in app.label(ann, item["id"], 422, ranking=[0, 1, 2, 3], strength=1)["error"]
    assert app.label(ann, item["id"], ranking=[2, [1, 0], 3])["submission"]["ranking"] == [2, [0, 1], 3]
    assert app.call("GET", "/api/next", ann)["assignment"] is None  # all done
    export = app.call("GET", f"/api/admin/projects/{pid}/export?format=ranking", ADMIN)
    assert json.loads(export) == {"prompt": "p", "responses": ["w", "x", "y", "z"], "ranking": [2, [0, 1], 3],
                                  "annotator": ["ann"]}


def test_overlap_and_gold_serving(app):
    pid = app.project(overlap=2)["id"]
    tokens = [app.annotator(pid, n) for n in ("a", "b", "c")]
    served = {t: [] for t in tokens}
    for _ in range(5):
        for t in tokens:
            item = app.call("GET", "/api/next", t)["assignment"]
            if item:
                served[t].append(item["prompt"])
                app.label(t, item["id"], key=f"{item['id']}", choice="A")
    counts = {}
    for prompts in served.values():
        for p in prompts:
            counts[p] = counts.get(p, 0) + 1
    assert counts["gold"] == 3  # gold items go to everyone
    assert all(counts[f"prompt {i}"] == 2 for i in range(4))  # regular items to exactly `overlap` annotators
    assert all(prompts.index("gold") == 2 for prompts in served.values() if len(prompts) > 2)  # after 2 regular
    stats = app.call("GET", f"/api/admin/projects/{pid}/stats", ADMIN)
    assert stats["gold_accuracy"] == 1.0 and stats["units_with_overlap"] == 5


class LengthScorer:
    def score(self, prompts, responses):  # responses of equal length are the close calls
        return [float(len(r)) for r in responses], None


def test_active_learning_serves_most_uncertain_first(store):
    app = App(store, scorer=LengthScorer())
    rows = [{"prompt": "sure", "responses": ["a", "aaaaaaaaaa"]}, {"prompt": "unsure", "responses": ["aaa", "bbb"]},
            {"prompt": "middle", "responses": ["aa", "bbb"]}]
    pid = app.project("al", candidates_jsonl=jsonl(rows))["id"]
    ann = app.annotator(pid, "ann")
    order = []
    while (item := app.call("GET", "/api/next", ann)["assignment"]) is not None:
        order.append(item["prompt"])
        app.label(ann, item["id"], key=item["prompt"], choice="tie")
    assert order == ["unsure", "middle", "sure"]
    assert app.call("POST", f"/api/admin/projects/{pid}/rescore", ADMIN) == {"scored": 3}


def test_malformed_requests_get_a_4xx_never_a_500(store):
    app = App(store)
    app.client = TestClient(app.client.app, raise_server_exceptions=False)
    pid = app.project()["id"]
    tok = app.annotator(pid, "ann")
    item = app.call("GET", "/api/next", tok)["assignment"]
    h = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
    admin = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    label = f"/api/assignments/{item['id']}/label"
    cases = [
        ("GET", "/api/assignments/99999999999999999999999", h, None, 422),  # beyond SQLite's integers
        ("POST", label, h, b"[1, 2]", 422), ("POST", label, h, b"", 422), ("POST", label, h, b'"A"', 422),
        ("POST", label, {**h, "Content-Type": "text/plain"}, b"hello", 422),
        ("POST", label, h, b'{"idempotency_key": "k", "choice": "A", "strength": 1e400}', 422),
        ("POST", label, h, b'{"idempotency_key": "' + b"k" * 129 + b'", "choice": "A"}', 422),
        ("POST", label, h, b'{"idempotency_key": "k", "ranking": [[[0]], 1]}', 422),
        ("POST", f"/api/assignments/{item['id']}/skip", h, b'{"idempotency_key": "k", "reason": "\\ud800"}', 422),
        ("GET", "/api/me", {"Authorization": b"Bearer \xb2." + tok.split(".")[1].encode()}, None, 401),
        ("GET", "/api/admin/projects/%C2%B2", admin, None, 404),  # "²".isdigit() is True in Python
        ("GET", "/api/admin/projects/99999999999999999999999", admin, None, 404),
        ("POST", f"/api/admin/projects/{pid}/annotators", admin, b'{"name": "\\ud800"}', 422),
        ("POST", "/api/admin/projects", admin, json.dumps({"name": "q", "mode": "ranking", "seed": 10**30,
                                                           "policy_dir": "/p", "prompts_jsonl": "{}"}).encode(), 422),
        ("POST", "/api/admin/projects", admin, json.dumps({"name": "q", "mode": "ranking", "policy_dir": "/nowhere",
                                                           "prompts_jsonl": '{"prompt": "x"}'}).encode(), 422),
        ("GET", f"/api/admin/projects/{pid}/export?drop_ties=maybe", admin, None, 422),
    ]
    for method, path, headers, body, status in cases:
        r = app.client.request(method, path, headers=headers, content=body)
        assert r.status_code == status and r.json()["error"], (path, body, r.status_code, r.text)
    assert submissions(app) == 0
