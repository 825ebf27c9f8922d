"""Helpers for tests, notebooks and scripts: the app on loopback, and a throwaway PostgreSQL server.

    with running_server(store, admin_token=token) as base_url:
        httpx.get(base_url + "/api/health")

    with throwaway_postgres() as server_url:          # initdb in a temp folder, pg_ctl on loopback
        store = open_storage(create_database(server_url, "labels"))
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rlhfkit.feedback.app.storage import Storage

PG_SUPERUSER = "rlhfkit"
"""the superuser of a throwaway cluster (trust authentication on loopback: it lives for one test run)"""


@contextmanager
def running_server(store: Storage, *, admin_token: str, scorer=None, timeout_s: float = 10.0):
    """Serve on 127.0.0.1 at a free port; yields the base URL; stops the server on exit."""
    from rlhfkit.feedback.app.server import create_app
    from rlhfkit.serve.loopback import serve_on_loopback

    app = create_app(store, admin_token=admin_token, scorer=scorer)
    with serve_on_loopback(app, timeout_s=timeout_s, what="labeling server") as base_url:
        yield base_url


def query(store: Storage, sql: str, *params) -> list[dict]:
    """Rows of one read-only query, on either database (``?`` placeholders)."""
    with store.db.transaction() as tx:
        return tx.all(sql, *params)


# ---------------------------------------------------------------- a throwaway PostgreSQL


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin; None if nowhere."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    return Path(found[-1]).parent if found else None


def _unprivileged_user() -> pwd.struct_passwd:
    """PostgreSQL refuses to run as root: as root, run it as 'postgres' (Debian's package makes that user),
    else as 'nobody'."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_postgres(*, bin_dir: Path | None = None, timeout_s: float = 60.0):
    """A new PostgreSQL cluster in a temporary folder, on a free loopback port, removed on exit.
    Yields the server URL (``postgresql://rlhfkit@127.0.0.1:PORT``); add ``/dbname`` to connect.

    fsync is off: the cluster lives for one test run, and a killed client (what the restart tests
    kill) loses nothing either way, since every commit reaches the server before it answers."""
    bin_dir = bin_dir or postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin")
    as_user = {}
    root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))
    if os.geteuid() == 0:
        user = _unprivileged_user()
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    data, log = root / "data", root / "server.log"

    def run(*cmd: str) -> None:
        done = subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], cwd=root, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s,
                              env={**os.environ, "LC_ALL": "C", "HOME": str(root)}, **as_user)
        if done.returncode != 0:
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}):\n{done.stdout}\n{server_log}")

    started = False
    try:
        run("initdb", "-D", str(data), "-U", PG_SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        port = _free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off "
                   "-c synchronous_commit=off -c max_connections=200")
        run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", str(int(timeout_s)), "-o", options, "start")
        started = True
        yield f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}"
    finally:
        if started:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """Make an empty database on the server; returns its URL."""
    import psycopg

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"
