"""Storage for the labeling app: SQLite in WAL mode behind a small interface.

Every method is one transaction on its own short-lived connection, so the store is safe to call
from the server's thread pool. Writes take the write lock up front (``BEGIN IMMEDIATE``) and wait
for it up to ``busy_timeout_s``; ``synchronous=FULL`` makes every committed label survive a crash.
The SQL is plain enough that a PostgreSQL store could implement the same methods later.

Tables: projects, items, annotators, assignments (one per annotator and item, created when the item
is first served to that annotator), submissions (labels and skips; undo marks one ``undone_at``).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from rlhfkit.feedback.app.items import CHOICES, MODES, InputError, normalize_ranking

RESERVATION_S = 3600.0
"""an item served to an annotator counts towards its overlap for this long, then others may take it"""
GOLD_EVERY = 5
"""one gold item is served in about every GOLD_EVERY items (the first after GOLD_EVERY // 2)"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
  mode TEXT NOT NULL CHECK (mode IN ('pairwise', 'ranking')),
  overlap INTEGER NOT NULL CHECK (overlap >= 1),
  strength_scale INTEGER NOT NULL DEFAULT 0 CHECK (strength_scale >= 0),
  guidelines TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
  position INTEGER NOT NULL, prompt TEXT NOT NULL, responses TEXT NOT NULL,
  gold TEXT, priority REAL);
CREATE INDEX IF NOT EXISTS items_by_project ON items(project_id, position);
CREATE TABLE IF NOT EXISTS annotators (
  id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
  name TEXT NOT NULL, secret TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (project_id, name));
CREATE TABLE IF NOT EXISTS assignments (
  id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'skipped')), reserved_at REAL NOT NULL,
  UNIQUE (item_id, annotator_id));
CREATE INDEX IF NOT EXISTS assignments_by_annotator ON assignments(annotator_id, status);
CREATE TABLE IF NOT EXISTS submissions (
  id INTEGER PRIMARY KEY, assignment_id INTEGER NOT NULL REFERENCES assignments(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  idempotency_key TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('label', 'skip')),
  ranking TEXT, strength INTEGER, reason TEXT, created_at REAL NOT NULL,
  undone_at REAL, undo_key TEXT,
  UNIQUE (annotator_id, idempotency_key), UNIQUE (annotator_id, undo_key));
CREATE UNIQUE INDEX IF NOT EXISTS one_live_submission ON submissions(assignment_id) WHERE undone_at IS NULL;
"""


class Refused(Exception):
    """A request the store will not carry out; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def open_storage(url: str) -> "SQLiteStorage":
    """A store from a path or URL: ``feedback.sqlite`` or ``sqlite:///feedback.sqlite``.

    Only SQLite is supported; any other database URL is refused with a clear error rather than
    being taken for a file name."""
    if "://" in url and not url.startswith("sqlite:///"):
        raise Refused(400, f"unsupported database URL {url!r}: only SQLite (a path or sqlite:///path) is supported")
    return SQLiteStorage(url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url)


class SQLiteStorage:
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0):
        self.path, self.busy_timeout_s = str(path), busy_timeout_s
        new = not os.path.exists(self.path)
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
        finally:
            con.close()
        if new:
            os.chmod(self.path, 0o600)  # holds the secret tokens

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        return con

    @contextmanager
    def _tx(self, write: bool = False):
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield con
            con.execute("COMMIT")
        except BaseException as err:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if isinstance(err, OverflowError):
                raise Refused(422, "a number is out of range") from None
            if isinstance(err, UnicodeEncodeError):
                raise Refused(422, "text is not valid Unicode (it holds a lone surrogate)") from None
            raise
        finally:
            con.close()

    # ------------------------------------------------------------ admin token

    def admin_token(self) -> str:
        """The admin token kept in the database (made on first use), so links survive restarts."""
        with self._tx(write=True) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'admin_token'").fetchone()
            if row:
                return row["value"]
            token = secrets.token_urlsafe(24)
            con.execute("INSERT INTO meta (key, value) VALUES ('admin_token', ?)", (token,))
            return token

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
        with self._tx(write=True) as con:
            if con.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
                raise Refused(409, f"a project named {name!r} exists already")
            pid = con.execute(
                "INSERT INTO projects (name, mode, overlap, strength_scale, guidelines, created_at) VALUES (?,?,?,?,?,?)",
                (name, mode, overlap, strength_scale, guidelines, time.time())).lastrowid
            con.executemany(
                "INSERT INTO items (project_id, position, prompt, responses, gold, priority) VALUES (?,?,?,?,?,?)",
                [(pid, pos, json.dumps(it["prompt"]), json.dumps(it["responses"]),
                  None if it.get("gold") is None else json.dumps(it["gold"]), it.get("priority"))
                 for pos, it in enumerate(items)])
        return self.project(pid)

    def project(self, ref: int | str) -> dict:
        """A project by id or name; 404 if there is none."""
        with self._tx() as con:
            row = None
            if _is_id(str(ref)):
                row = con.execute("SELECT * FROM projects WHERE id = ?", (int(ref),)).fetchone()
            row = row or con.execute("SELECT * FROM projects WHERE name = ?", (str(ref),)).fetchone()
            if row is None:
                raise Refused(404, f"no project {ref!r}")
            out = dict(row)
            out["items"] = con.execute("SELECT COUNT(*) FROM items WHERE project_id = ?", (row["id"],)).fetchone()[0]
            out["gold_items"] = con.execute(
                "SELECT COUNT(*) FROM items WHERE project_id = ? AND gold IS NOT NULL", (row["id"],)).fetchone()[0]
            return out

    def projects(self) -> list[dict]:
        with self._tx() as con:
            ids = [r[0] for r in con.execute("SELECT id FROM projects ORDER BY id")]
        return [self.project(i) for i in ids]

    def items(self, project_id: int) -> list[dict]:
        with self._tx() as con:
            rows = con.execute("SELECT * FROM items WHERE project_id = ? ORDER BY position", (project_id,)).fetchall()
        return [_item(r) for r in rows]

    def set_priorities(self, priorities: dict[int, float]) -> None:
        with self._tx(write=True) as con:
            con.executemany("UPDATE items SET priority = ? WHERE id = ?", [(p, i) for i, p in priorities.items()])

    # ------------------------------------------------------------ annotators

    def add_annotator(self, project_id: int, name: str) -> dict:
        name = name.strip()
        if not name or len(name) > 100:
            raise Refused(422, "name: must be 1 to 100 characters")
        self.project(project_id)
        with self._tx(write=True) as con:
            if con.execute("SELECT 1 FROM annotators WHERE project_id = ? AND name = ?", (project_id, name)).fetchone():
                raise Refused(409, f"annotator {name!r} exists already in this project")
            secret = secrets.token_urlsafe(24)
            aid = con.execute("INSERT INTO annotators (project_id, name, secret, created_at) VALUES (?,?,?,?)",
                              (project_id, name, secret, time.time())).lastrowid
        return {"id": aid, "project_id": project_id, "name": name, "token": f"{aid}.{secret}"}

    def annotators(self, project_id: int) -> list[dict]:
        with self._tx() as con:
            rows = con.execute("SELECT * FROM annotators WHERE project_id = ? ORDER BY id", (project_id,)).fetchall()
        return [{"id": r["id"], "project_id": project_id, "name": r["name"], "token": f"{r['id']}.{r['secret']}"}
                for r in rows]

    def annotator_by_token(self, token: str) -> dict | None:
        """The annotator whose token this is, compared in constant time; None otherwise."""
        aid, _, secret = token.partition(".")
        if not _is_id(aid) or not secret:
            return None
        with self._tx() as con:
            row = con.execute("SELECT * FROM annotators WHERE id = ?", (int(aid),)).fetchone()
        if row is None or not hmac.compare_digest(row["secret"].encode(), secret.encode()):
            return None
        return {"id": row["id"], "project_id": row["project_id"], "name": row["name"]}

    # ------------------------------------------------------------ serving items

    def next_assignment(self, annotator: dict) -> dict | None:
        """The annotator's pending assignment, else a new one (most uncertain item first), else None."""
        now = time.time()
        with self._tx(write=True) as con:
            row = con.execute("SELECT id FROM assignments WHERE annotator_id = ? AND status = 'pending' "
                              "ORDER BY reserved_at DESC, id DESC LIMIT 1", (annotator["id"],)).fetchone()
            if row:
                con.execute("UPDATE assignments SET reserved_at = ? WHERE id = ?", (now, row["id"]))
                return _assignment(con, row["id"])
            item_id = _pick(con, annotator, now)
            if item_id is None:
                return None
            aid = con.execute("INSERT INTO assignments (item_id, annotator_id, status, reserved_at) "
                              "VALUES (?, ?, 'pending', ?)", (item_id, annotator["id"], now)).lastrowid
            return _assignment(con, aid)

    def assignment(self, annotator: dict, assignment_id: int) -> dict:
        with self._tx() as con:
            return _assignment(con, assignment_id, annotator_id=annotator["id"])

    def progress(self, annotator: dict) -> dict:
        with self._tx() as con:
            counts = dict(con.execute("SELECT status, COUNT(*) FROM assignments WHERE annotator_id = ? "
                                      "GROUP BY status", (annotator["id"],)).fetchall())
            left = _available(con, annotator, time.time(), count=True)
        done, skipped, pending = (counts.get(s, 0) for s in ("done", "skipped", "pending"))
        return {"done": done, "skipped": skipped, "left": left + pending}

    # ------------------------------------------------------------ submissions

    def submit(self, annotator: dict, assignment_id: int, *, key: str, choice: str | None = None,
               ranking: list | None = None, strength: int | None = None, reason: str | None = None,
               skip: bool = False) -> tuple[dict, bool]:
        """Record a label (``choice`` or ``ranking``) or a skip. Returns (submission, duplicate):
        a retry with the same idempotency ``key`` returns the first submission and changes nothing."""
        with self._tx(write=True) as con:
            assignment = _assignment(con, assignment_id, annotator_id=annotator["id"])
            project = con.execute("SELECT * FROM projects WHERE id = ?", (annotator["project_id"],)).fetchone()
            kind = "skip" if skip else "label"
            canonical = None if skip else _check_label(project, assignment, choice, ranking, strength)
            if not skip and (choice == "tie" or project["strength_scale"] == 0):
                strength = None
            reason = (reason or "").strip() or None
            if skip and not reason:
                raise Refused(422, "reason: say why you skip (e.g. 'cannot judge')")
            payload = (assignment_id, kind, json.dumps(canonical) if canonical else None, strength, reason)
            old = con.execute("SELECT * FROM submissions WHERE annotator_id = ? AND idempotency_key = ?",
                              (annotator["id"], key)).fetchone()
            if old is not None:
                if (old["assignment_id"], old["kind"], old["ranking"], old["strength"], old["reason"]) != payload:
                    raise Refused(409, "idempotency_key was already used for a different submission")
                return _submission(old), True
            if assignment["status"] != "pending":
                raise Refused(409, f"assignment {assignment_id} is {assignment['status']} already; undo it first")
            sid = con.execute(
                "INSERT INTO submissions (assignment_id, annotator_id, idempotency_key, kind, ranking, strength, "
                "reason, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (assignment_id, annotator["id"], key, *payload[1:], time.time())).lastrowid
            con.execute("UPDATE assignments SET status = ? WHERE id = ?",
                        ("skipped" if skip else "done", assignment_id))
            return _submission(con.execute("SELECT * FROM submissions WHERE id = ?", (sid,)).fetchone()), False

    def undo(self, annotator: dict, *, key: str) -> tuple[dict, bool]:
        """Take back the annotator's latest live submission; its item is served again next.
        A retry with the same ``key`` undoes nothing more. Returns (submission undone, duplicate)."""
        with self._tx(write=True) as con:
            old = con.execute("SELECT * FROM submissions WHERE annotator_id = ? AND undo_key = ?",
                              (annotator["id"], key)).fetchone()
            if old is not None:
                return _submission(old), True
            row = con.execute("SELECT * FROM submissions WHERE annotator_id = ? AND undone_at IS NULL "
                              "ORDER BY id DESC LIMIT 1", (annotator["id"],)).fetchone()
            if row is None:
                raise Refused(409, "nothing to undo")
            now = time.time()
            con.execute("UPDATE submissions SET undone_at = ?, undo_key = ? WHERE id = ?", (now, key, row["id"]))
            con.execute("UPDATE assignments SET status = 'pending', reserved_at = ? WHERE id = ?",
                        (now, row["assignment_id"]))
            return _submission(con.execute("SELECT * FROM submissions WHERE id = ?", (row["id"],)).fetchone()), False

    # ------------------------------------------------------------ reading results

    def labels(self, project_id: int) -> list[dict]:
        """Live labels (not skips, not undone): item_id, annotator (name), ranking, strength."""
        with self._tx() as con:
            rows = con.execute(
                "SELECT s.id, a.item_id, n.name AS annotator, s.ranking, s.strength, s.created_at "
                "FROM submissions s JOIN assignments a ON a.id = s.assignment_id "
                "JOIN annotators n ON n.id = s.annotator_id "
                "WHERE n.project_id = ? AND s.kind = 'label' AND s.undone_at IS NULL ORDER BY s.id", (project_id,))
            return [dict(r, ranking=json.loads(r["ranking"])) for r in rows]

    def annotator_progress(self, project_id: int) -> list[dict]:
        with self._tx() as con:
            rows = con.execute(
                "SELECT n.id, n.name, "
                "SUM(a.status = 'done') AS done, SUM(a.status = 'skipped') AS skipped, "
                "SUM(a.status = 'pending') AS pending, MAX(a.reserved_at) AS last_active "
                "FROM annotators n LEFT JOIN assignments a ON a.annotator_id = n.id "
                "WHERE n.project_id = ? GROUP BY n.id ORDER BY n.id", (project_id,)).fetchall()
        return [{k: (r[k] or 0) if k in ("done", "skipped", "pending") else r[k] for k in r.keys()} for r in rows]


# ---------------------------------------------------------------- helpers (inside a transaction)


def _is_id(text: str) -> bool:
    """ASCII digits that fit an SQLite integer ("²".isdigit() is True in Python)."""
    return text.isascii() and text.isdigit() and len(text) < 19


def _item(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "position": row["position"], "prompt": json.loads(row["prompt"]),
            "responses": json.loads(row["responses"]),
            "gold": None if row["gold"] is None else json.loads(row["gold"]), "priority": row["priority"]}


def _submission(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "assignment_id": row["assignment_id"], "kind": row["kind"],
            "ranking": None if row["ranking"] is None else json.loads(row["ranking"]),
            "strength": row["strength"], "reason": row["reason"], "undone": row["undone_at"] is not None}


def _assignment(con: sqlite3.Connection, assignment_id: int, *, annotator_id: int | None = None) -> dict:
    """An assignment with its item (never the gold answer). With ``annotator_id``, someone else's is a 404."""
    row = con.execute("SELECT a.id, a.status, a.annotator_id, i.prompt, i.responses FROM assignments a "
                      "JOIN items i ON i.id = a.item_id WHERE a.id = ?", (assignment_id,)).fetchone()
    if row is None or (annotator_id is not None and row["annotator_id"] != annotator_id):
        raise Refused(404, f"you have no assignment {assignment_id}")
    return {"id": row["id"], "status": row["status"], "prompt": json.loads(row["prompt"]),
            "responses": json.loads(row["responses"])}


_OPEN = ("FROM items i WHERE i.project_id = :project AND i.gold IS {gold} "
         "AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.annotator_id = :me)")
_ROOM = (" AND (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND (a.status = 'done' "
         "OR (a.status = 'pending' AND a.reserved_at > :fresh))) < :overlap")


def _available(con, annotator: dict, now: float, *, count: bool = False, gold: bool | None = None):
    """Items this annotator has not seen: regular ones with room under the overlap (most uncertain
    first), gold ones for everyone (in an order of their own per annotator)."""
    overlap = con.execute("SELECT overlap FROM projects WHERE id = ?", (annotator["project_id"],)).fetchone()[0]
    args = {"project": annotator["project_id"], "me": annotator["id"], "fresh": now - RESERVATION_S,
            "overlap": overlap}
    regular = _OPEN.format(gold="NULL") + _ROOM
    golden = _OPEN.format(gold="NOT NULL")
    if count:
        return sum(con.execute(f"SELECT COUNT(*) {q}", args).fetchone()[0] for q in (regular, golden))
    if gold:
        row = con.execute(f"SELECT i.id {golden} ORDER BY (i.id * 2654435761 + :me * 40503) % 1000003 LIMIT 1",
                          args).fetchone()
    else:
        row = con.execute(f"SELECT i.id {regular} ORDER BY COALESCE(i.priority, 0) DESC, i.position LIMIT 1",
                          args).fetchone()
    return None if row is None else row[0]


def _pick(con, annotator: dict, now: float) -> int | None:
    seen = dict(con.execute("SELECT i.gold IS NOT NULL, COUNT(*) FROM assignments a JOIN items i ON i.id = a.item_id "
                            "WHERE a.annotator_id = ? GROUP BY 1", (annotator["id"],)).fetchall())
    gold_seen, regular_seen = seen.get(1, 0), seen.get(0, 0)
    gold_due = regular_seen - GOLD_EVERY * gold_seen >= GOLD_EVERY // 2
    first, second = (True, False) if gold_due else (False, True)
    found = _available(con, annotator, now, gold=first)
    return found if found is not None else _available(con, annotator, now, gold=second)


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
