"""The labeling app's store: one class over SQLite or PostgreSQL (``db.py``, the query layer).

Every method is one transaction. The invariants hold under any number of concurrent requests:
- each submission is stored exactly once: every write for an annotator first locks that annotator's
  row (``SELECT ... FOR UPDATE``), so their double clicks and retries run one after the other and a
  retry finds the first submission by its idempotency key;
- each regular item goes to at most ``overlap`` different annotators: handing an item out locks the
  item row (``FOR UPDATE SKIP LOCKED``: a busy item is passed over, not waited for) and recounts its
  assignments under that lock before adding one.
On SQLite the locks are implied (``BEGIN IMMEDIATE`` admits one writer at a time); on PostgreSQL they
are real row locks at READ COMMITTED, where each statement sees everything committed before it.
The schema and its migrations are in ``schema.py``.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from pathlib import Path

from rlhfkit.feedback.app.db import Refused, SQLiteDatabase, Tx, open_database
from rlhfkit.feedback.app.items import CHOICES, MODES, InputError, normalize_ranking
from rlhfkit.feedback.app.schema import migrate

__all__ = ["Refused", "Storage", "SQLiteStorage", "open_storage", "RESERVATION_S", "GOLD_EVERY"]

RESERVATION_S = 3600.0
"""an item served to an annotator counts towards its overlap for this long, then others may take it"""
GOLD_EVERY = 5
"""one gold item is served in about every GOLD_EVERY items (the first after GOLD_EVERY // 2)"""


def open_storage(url: str) -> "Storage":
    """A store from a path or URL: ``feedback.sqlite``, ``sqlite:///feedback.sqlite`` or
    ``postgresql://user@host:port/dbname``; the schema is created or upgraded on the way."""
    return Storage(open_database(url))


class Storage:
    def __init__(self, db):
        self.db = db
        migrate(db)

    def _tx(self, write: bool = False):
        return self.db.transaction(write)

    def close(self) -> None:
        """Release the database's connections (the PostgreSQL pool); the store is unusable after."""
        self.db.close()

    # ------------------------------------------------------------ admin token

    def admin_token(self) -> str:
        """The admin token kept in the database (made on first use), so links survive restarts."""
        with self._tx(write=True) as tx:
            tx.run("INSERT INTO meta (key, value) VALUES ('admin_token', ?) ON CONFLICT (key) DO NOTHING",
                   secrets.token_urlsafe(24))
            return tx.value("SELECT value FROM meta WHERE key = 'admin_token'")

    # ------------------------------------------------------------ projects and items

    def create_project(self, name: str, *, mode: str, items: list[dict], overlap: int = 1,
                       strength_scale: int = 0, guidelines: str = "") -> dict:
        """``items``: dicts with prompt, responses, gold (canonical ranking or None), priority (or None)."""
        if not name.strip() or _is_id(name):
            raise Refused(422, "name: must not be empty or only digits (that would read as a project id)")
        if mode not in MODES:
            raise Refused(422, f"mode: must be one of {list(MODES)}")
        if overlap < 1:
            raise Refused(422, "overlap: must be at least 1")
        if strength_scale < 0 or (strength_scale and mode != "pairwise"):
            raise Refused(422, "strength_scale: must be >= 0, and is for pairwise projects only")
        if not items:
            raise Refused(422, "a project needs at least one item")
        with self._tx(write=True) as tx:
            if tx.one("SELECT 1 AS x FROM projects WHERE name = ?", name):
                raise Refused(409, f"a project named {name!r} exists already")
            pid = tx.insert("INSERT INTO projects (name, mode, overlap, strength_scale, guidelines, created_at) "
                            "VALUES (?,?,?,?,?,?)", name, mode, overlap, strength_scale, guidelines, time.time())
            tx.many("INSERT INTO items (project_id, position, prompt, responses, gold, priority) VALUES (?,?,?,?,?,?)",
                    [(pid, pos, json.dumps(it["prompt"]), json.dumps(it["responses"]),
                      None if it.get("gold") is None else json.dumps(it["gold"]), it.get("priority"))
                     for pos, it in enumerate(items)])
        return self.project(pid)

    def project(self, ref: int | str) -> dict:
        """A project by id or name; 404 if there is none."""
        with self._tx() as tx:
            row = None
            if _is_id(str(ref)):
                row = tx.one("SELECT * FROM projects WHERE id = ?", int(ref))
            row = row or tx.one("SELECT * FROM projects WHERE name = ?", str(ref))
            if row is None:
                raise Refused(404, f"no project {ref!r}")
            counts = tx.one("SELECT COUNT(*) AS items, COUNT(gold) AS gold_items FROM items WHERE project_id = ?",
                            row["id"])
            return {**row, **counts}

    def projects(self) -> list[dict]:
        with self._tx() as tx:
            ids = [r["id"] for r in tx.all("SELECT id FROM projects ORDER BY id")]
        return [self.project(i) for i in ids]

    def items(self, project_id: int) -> list[dict]:
        with self._tx() as tx:
            rows = tx.all("SELECT * FROM items WHERE project_id = ? ORDER BY position", project_id)
        return [_item(r) for r in rows]

    def set_priorities(self, priorities: dict[int, float]) -> None:
        with self._tx(write=True) as tx:
            tx.many("UPDATE items SET priority = ? WHERE id = ?", [(p, i) for i, p in priorities.items()])

    # ------------------------------------------------------------ annotators

    def add_annotator(self, project_id: int, name: str) -> dict:
        name = name.strip()
        if not name or len(name) > 100:
            raise Refused(422, "name: must be 1 to 100 characters")
        self.project(project_id)
        with self._tx(write=True) as tx:
            if tx.one("SELECT 1 AS x FROM annotators WHERE project_id = ? AND name = ?", project_id, name):
                raise Refused(409, f"annotator {name!r} exists already in this project")
            secret = secrets.token_urlsafe(24)
            aid = tx.insert("INSERT INTO annotators (project_id, name, secret, created_at) VALUES (?,?,?,?)",
                            project_id, name, secret, time.time())
        return {"id": aid, "project_id": project_id, "name": name, "token": f"{aid}.{secret}"}

    def annotators(self, project_id: int) -> list[dict]:
        with self._tx() as tx:
            rows = tx.all("SELECT * FROM annotators WHERE project_id = ? ORDER BY id", project_id)
        return [{"id": r["id"], "project_id": project_id, "name": r["name"], "token": f"{r['id']}.{r['secret']}"}
                for r in rows]

    def annotator_by_token(self, token: str) -> dict | None:
        """The annotator whose token this is, compared in constant time; None otherwise."""
        aid, _, secret = token.partition(".")
        if not _is_id(aid) or not secret:
            return None
        with self._tx() as tx:
            row = tx.one("SELECT * FROM annotators WHERE id = ?", int(aid))
        if row is None or not hmac.compare_digest(row["secret"].encode(), secret.encode()):
            return None
        return {"id": row["id"], "project_id": row["project_id"], "name": row["name"]}

    # ------------------------------------------------------------ serving items

    def next_assignment(self, annotator: dict) -> dict | None:
        """The annotator's pending assignment, else a new one (most uncertain item first), else None."""
        now = time.time()
        with self._tx(write=True) as tx:
            _lock_annotator(tx, annotator)
            row = tx.one("SELECT id FROM assignments WHERE annotator_id = ? AND status = 'pending' "
                         "ORDER BY reserved_at DESC, id DESC LIMIT 1", annotator["id"])
            if row:
                tx.run("UPDATE assignments SET reserved_at = ? WHERE id = ?", now, row["id"])
                return _assignment(tx, row["id"])
            item_id = _pick(tx, annotator, now)
            if item_id is None:
                return None
            aid = tx.insert("INSERT INTO assignments (item_id, annotator_id, status, reserved_at) "
                            "VALUES (?, ?, 'pending', ?)", item_id, annotator["id"], now)
            return _assignment(tx, aid)

    def assignment(self, annotator: dict, assignment_id: int) -> dict:
        with self._tx() as tx:
            return _assignment(tx, assignment_id, annotator_id=annotator["id"])

    def progress(self, annotator: dict) -> dict:
        with self._tx() as tx:
            counts = {r["status"]: r["n"] for r in tx.all(
                "SELECT status, COUNT(*) AS n FROM assignments WHERE annotator_id = ? GROUP BY status",
                annotator["id"])}
            left = _available(tx, annotator, time.time(), count=True)
        done, skipped, pending = (counts.get(s, 0) for s in ("done", "skipped", "pending"))
        return {"done": done, "skipped": skipped, "left": left + pending}

    # ------------------------------------------------------------ submissions

    def submit(self, annotator: dict, assignment_id: int, *, key: str, choice: str | None = None,
               ranking: list | None = None, strength: int | None = None, reason: str | None = None,
               skip: bool = False) -> tuple[dict, bool]:
        """Record a label (``choice`` or ``ranking``) or a skip. Returns (submission, duplicate):
        a retry with the same idempotency ``key`` returns the first submission and changes nothing."""
        with self._tx(write=True) as tx:
            _lock_annotator(tx, annotator)
            assignment = _assignment(tx, assignment_id, annotator_id=annotator["id"])
            project = tx.one("SELECT * FROM projects WHERE id = ?", annotator["project_id"])
            kind = "skip" if skip else "label"
            canonical = None if skip else _check_label(project, assignment, choice, ranking, strength)
            if not skip and (choice == "tie" or project["strength_scale"] == 0):
                strength = None
            reason = (reason or "").strip() or None
            if skip and not reason:
                raise Refused(422, "reason: say why you skip (e.g. 'cannot judge')")
            payload = (assignment_id, kind, json.dumps(canonical) if canonical else None, strength, reason)
            old = tx.one("SELECT * FROM submissions WHERE annotator_id = ? AND idempotency_key = ?",
                         annotator["id"], key)
            if old is not None:
                if (old["assignment_id"], old["kind"], old["ranking"], old["strength"], old["reason"]) != payload:
                    raise Refused(409, "idempotency_key was already used for a different submission")
                return _submission(old), True
            if assignment["status"] != "pending":
                raise Refused(409, f"assignment {assignment_id} is {assignment['status']} already; undo it first")
            served_at = tx.value("SELECT reserved_at FROM assignments WHERE id = ?", assignment_id)
            sid = tx.insert(
                "INSERT INTO submissions (assignment_id, annotator_id, idempotency_key, kind, ranking, strength, "
                "reason, created_at, served_at) VALUES (?,?,?,?,?,?,?,?,?)",
                assignment_id, annotator["id"], key, *payload[1:], time.time(), served_at)
            tx.run("UPDATE assignments SET status = ? WHERE id = ?", "skipped" if skip else "done", assignment_id)
            return _submission(tx.one("SELECT * FROM submissions WHERE id = ?", sid)), False

    def undo(self, annotator: dict, *, key: str) -> tuple[dict, bool]:
        """Take back the annotator's latest live submission; its item is served again next.
        A retry with the same ``key`` undoes nothing more. Returns (submission undone, duplicate)."""
        with self._tx(write=True) as tx:
            _lock_annotator(tx, annotator)
            old = tx.one("SELECT * FROM submissions WHERE annotator_id = ? AND undo_key = ?", annotator["id"], key)
            if old is not None:
                return _submission(old), True
            row = tx.one("SELECT * FROM submissions WHERE annotator_id = ? AND undone_at IS NULL "
                         "ORDER BY id DESC LIMIT 1", annotator["id"])
            if row is None:
                raise Refused(409, "nothing to undo")
            now = time.time()
            tx.run("UPDATE submissions SET undone_at = ?, undo_key = ? WHERE id = ?", now, key, row["id"])
            tx.run("UPDATE assignments SET status = 'pending', reserved_at = ? WHERE id = ?", now, row["assignment_id"])
            return _submission(tx.one("SELECT * FROM submissions WHERE id = ?", row["id"])), False

    # ------------------------------------------------------------ reading results

    def labels(self, project_id: int) -> list[dict]:
        """Live labels (not skips, not undone): item_id, annotator (name), ranking, strength,
        created_at and served_at (when the item was shown; None if unknown)."""
        with self._tx() as tx:
            rows = tx.all(
                "SELECT s.id, a.item_id, n.name AS annotator, s.ranking, s.strength, s.created_at, s.served_at "
                "FROM submissions s JOIN assignments a ON a.id = s.assignment_id "
                "JOIN annotators n ON n.id = s.annotator_id "
                "WHERE n.project_id = ? AND s.kind = 'label' AND s.undone_at IS NULL ORDER BY s.id", project_id)
        return [dict(r, ranking=json.loads(r["ranking"])) for r in rows]

    def annotator_progress(self, project_id: int) -> list[dict]:
        with self._tx() as tx:
            return tx.all(
                "SELECT n.id, n.name, COUNT(*) FILTER (WHERE a.status = 'done') AS done, "
                "COUNT(*) FILTER (WHERE a.status = 'skipped') AS skipped, "
                "COUNT(*) FILTER (WHERE a.status = 'pending') AS pending, MAX(a.reserved_at) AS last_active "
                "FROM annotators n LEFT JOIN assignments a ON a.annotator_id = n.id "
                "WHERE n.project_id = ? GROUP BY n.id, n.name ORDER BY n.id", project_id)


class SQLiteStorage(Storage):
    """The embedded default: a store in one SQLite file (made if missing)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0):
        self.path = str(path)
        super().__init__(SQLiteDatabase(self.path, busy_timeout_s=busy_timeout_s))


# ---------------------------------------------------------------- helpers (inside a transaction)


def _is_id(text: str) -> bool:
    """ASCII digits that fit a 64-bit integer ("²".isdigit() is True in Python)."""
    return text.isascii() and text.isdigit() and len(text) < 19


def _lock_annotator(tx: Tx, annotator: dict) -> None:
    """Serialise this annotator's writes: a double click or retry waits for the first to commit."""
    tx.run("SELECT id FROM annotators WHERE id = ? FOR UPDATE", annotator["id"])


def _item(row: dict) -> dict:
    return {"id": row["id"], "position": row["position"], "prompt": json.loads(row["prompt"]),
            "responses": json.loads(row["responses"]),
            "gold": None if row["gold"] is None else json.loads(row["gold"]), "priority": row["priority"]}


def _submission(row: dict) -> dict:
    return {"id": row["id"], "assignment_id": row["assignment_id"], "kind": row["kind"],
            "ranking": None if row["ranking"] is None else json.loads(row["ranking"]),
            "strength": row["strength"], "reason": row["reason"], "undone": row["undone_at"] is not None}


def _assignment(tx: Tx, assignment_id: int, *, annotator_id: int | None = None) -> dict:
    """An assignment with its item (never the gold answer). With ``annotator_id``, someone else's is a 404."""
    row = tx.one("SELECT a.id, a.status, a.annotator_id, i.prompt, i.responses FROM assignments a "
                 "JOIN items i ON i.id = a.item_id WHERE a.id = ?", assignment_id)
    if row is None or (annotator_id is not None and row["annotator_id"] != annotator_id):
        raise Refused(404, f"you have no assignment {assignment_id}")
    return {"id": row["id"], "status": row["status"], "prompt": json.loads(row["prompt"]),
            "responses": json.loads(row["responses"])}


_OPEN = ("FROM items i WHERE i.project_id = ? AND i.gold IS {gold} "
         "AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.annotator_id = ?)")
_TAKEN = ("SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND (a.status = 'done' "
          "OR (a.status = 'pending' AND a.reserved_at > ?))")
_REGULAR = _OPEN.format(gold="NULL") + f" AND ({_TAKEN}) < ?"
_GOLDEN = _OPEN.format(gold="NOT NULL")


def _available(tx: Tx, annotator: dict, now: float, *, count: bool = False, gold: bool | None = None):
    """Items this annotator has not seen: regular ones with room under the overlap (most uncertain
    first), gold ones for everyone (in an order of their own per annotator)."""
    overlap = tx.value("SELECT overlap FROM projects WHERE id = ?", annotator["project_id"])
    mine = (annotator["project_id"], annotator["id"])
    regular = (*mine, now - RESERVATION_S, overlap)
    if count:
        return (tx.value(f"SELECT COUNT(*) AS n {_REGULAR}", *regular)
                + tx.value(f"SELECT COUNT(*) AS n {_GOLDEN}", *mine))
    if gold:
        return tx.value(f"SELECT i.id {_GOLDEN} ORDER BY (i.id * 2654435761 + ? * 40503) % 1000003 LIMIT 1",
                        *mine, annotator["id"])
    for _ in range(100):
        # lock the best candidate, passing over items another request holds, then recount under the
        # lock: the count in the query may predate an assignment committed just before we locked
        item_id = tx.value(f"SELECT i.id {_REGULAR} ORDER BY COALESCE(i.priority, 0) DESC, i.position LIMIT 1 "
                           "FOR UPDATE OF i SKIP LOCKED", *regular)
        if item_id is None:
            return None
        taken = tx.value(_TAKEN.replace("i.id", "?"), item_id, now - RESERVATION_S)
        if taken < overlap:
            return item_id
    return None


def _pick(tx: Tx, annotator: dict, now: float) -> int | None:
    seen = {bool(r["gold"]): r["n"] for r in tx.all(
        "SELECT i.gold IS NOT NULL AS gold, COUNT(*) AS n FROM assignments a JOIN items i ON i.id = a.item_id "
        "WHERE a.annotator_id = ? GROUP BY i.gold IS NOT NULL", annotator["id"])}
    gold_seen, regular_seen = seen.get(True, 0), seen.get(False, 0)
    gold_due = regular_seen - GOLD_EVERY * gold_seen >= GOLD_EVERY // 2
    first, second = (True, False) if gold_due else (False, True)
    found = _available(tx, annotator, now, gold=first)
    return found if found is not None else _available(tx, annotator, now, gold=second)


def _check_label(project, assignment: dict, choice, ranking, strength) -> list:
    """The label as a canonical ranking, or a 422 that says what is wrong."""
    k = len(assignment["responses"])
    try:
        if project["mode"] == "pairwise":
            if ranking is not None or choice not in CHOICES:
                raise InputError(f"choice: must be one of {list(CHOICES)} in a pairwise project")
            scale = project["strength_scale"]
            if not scale and strength is not None:
                raise InputError("strength: this project has no strength scale")
            if scale and choice != "tie" and (isinstance(strength, bool) or strength not in range(1, scale + 1)):
                raise InputError(f"strength: must be an integer 1..{scale} for A or B")
            return CHOICES[choice]
        if strength is not None:
            raise InputError("strength: ranking projects have no strength scale")
        if choice is not None or ranking is None:
            raise InputError("ranking: required in a ranking project (best first; a list marks a tie)")
        return normalize_ranking(ranking, k)
    except InputError as err:
        raise Refused(422, str(err)) from None
