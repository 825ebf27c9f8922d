"""Run the app on loopback in a background thread: for tests, notebooks and scripts.

    with running_server(store, admin_token=token) as base_url:
        httpx.get(base_url + "/api/health")
"""

from __future__ import annotations

from contextlib import contextmanager

from rlhfkit.feedback.app.storage import SQLiteStorage


@contextmanager
def running_server(store: SQLiteStorage, *, admin_token: str, scorer=None, timeout_s: float = 10.0):
    """Serve on 127.0.0.1 at a free port; yields the base URL; stops the server on exit."""
    from rlhfkit.feedback.app.server import create_app
    from rlhfkit.serve.loopback import serve_on_loopback

    app = create_app(store, admin_token=admin_token, scorer=scorer)
    with serve_on_loopback(app, timeout_s=timeout_s, what="labeling server") as base_url:
        yield base_url
