"""The labeling database's schema and its migrations, for SQLite and PostgreSQL alike.

``schema_version`` holds one row: the version the database is at. ``migrate`` brings a database to
``LATEST`` in one transaction (so a failed upgrade changes nothing) and never drops data. A database
made before versioning (the tables but no ``schema_version``) is version 1.

Tables: projects, items, annotators, assignments (one per annotator and item, created when the item
is first served to that annotator), submissions (labels and skips; undo marks one ``undone_at``).
"""

from __future__ import annotations

from rlhfkit.feedback.app.db import Refused

V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
  id {id}, name TEXT NOT NULL UNIQUE,
  mode TEXT NOT NULL CHECK (mode IN ('pairwise', 'ranking')),
  overlap INTEGER NOT NULL CHECK (overlap >= 1),
  strength_scale INTEGER NOT NULL DEFAULT 0 CHECK (strength_scale >= 0),
  guidelines TEXT NOT NULL DEFAULT '', created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  id {id}, project_id BIGINT NOT NULL REFERENCES projects(id),
  position INTEGER NOT NULL, prompt TEXT NOT NULL, responses TEXT NOT NULL,
  gold TEXT, priority DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS items_by_project ON items(project_id, position);
CREATE TABLE IF NOT EXISTS annotators (
  id {id}, project_id BIGINT NOT NULL REFERENCES projects(id),
  name TEXT NOT NULL, secret TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, UNIQUE (project_id, name));
CREATE TABLE IF NOT EXISTS assignments (
  id {id}, item_id BIGINT NOT NULL REFERENCES items(id),
  annotator_id BIGINT NOT NULL REFERENCES annotators(id),
  status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'skipped')), reserved_at DOUBLE PRECISION NOT NULL,
  UNIQUE (item_id, annotator_id));
CREATE INDEX IF NOT EXISTS assignments_by_annotator ON assignments(annotator_id, status);
CREATE TABLE IF NOT EXISTS submissions (
  id {id}, assignment_id BIGINT NOT NULL REFERENCES assignments(id),
  annotator_id BIGINT NOT NULL REFERENCES annotators(id),
  idempotency_key TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('label', 'skip')),
  ranking TEXT, strength INTEGER, reason TEXT, created_at DOUBLE PRECISION NOT NULL,
  undone_at DOUBLE PRECISION, undo_key TEXT,
  UNIQUE (annotator_id, idempotency_key), UNIQUE (annotator_id, undo_key));
CREATE UNIQUE INDEX IF NOT EXISTS one_live_submission ON submissions(assignment_id) WHERE undone_at IS NULL
"""

# v2: an index for counting an item's assignments (its overlap), and when the item of each submission was served, for the labelling budget (seconds per item).
# Older submissions get their assignment's last reservation when it came before the submission
# (an undone item's reservation is the undo's time, after it: those stay unknown).
V2 = """
CREATE INDEX IF NOT EXISTS assignments_by_item ON assignments(item_id, status);
ALTER TABLE submissions ADD COLUMN served_at DOUBLE PRECISION;
UPDATE submissions SET served_at = (SELECT a.reserved_at FROM assignments a
  WHERE a.id = submissions.assignment_id AND a.reserved_at <= submissions.created_at)
"""

MIGRATIONS = {1: V1, 2: V2}
"""version -> the statements that bring version - 1 to it"""
LATEST = max(MIGRATIONS)


def migrate(db) -> tuple[int, int]:
    """Bring ``db`` (a SQLiteDatabase or PostgresDatabase) to LATEST; returns (version before, after)."""
    with db.transaction(write=True) as tx:
        db.lock_for_migration(tx)
        tx.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        before = tx.value("SELECT MAX(version) AS v FROM schema_version")
        if before is None:
            before = 1 if db.has_table(tx, "projects") else 0
            tx.run("INSERT INTO schema_version (version) VALUES (?)", before)
        if before > LATEST:
            raise Refused(409, f"{db.describe()} is at schema version {before}, newer than this rlhfkit "
                               f"understands ({LATEST}): upgrade rlhfkit")
        for version in range(before + 1, LATEST + 1):
            for statement in MIGRATIONS[version].split(";\n"):
                if statement.strip():
                    tx.run(statement.format(id=db.id_column))
            tx.run("UPDATE schema_version SET version = ?", version)
    return before, LATEST
