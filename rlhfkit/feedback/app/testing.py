"""Run the app on loopback in a background thread: for tests, notebooks and scripts.

    with running_server(store, admin_token=token) as base_url:
        httpx.get(base_url + "/api/health")
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

from rlhfkit.feedback.app.storage import SQLiteStorage


@contextmanager
def running_server(store: SQLiteStorage, *, admin_token: str, scorer=None, timeout_s: float = 10.0):
    """Serve on 127.0.0.1 at a free port; yields the base URL; stops the server on exit."""
    import uvicorn

    from rlhfkit.feedback.app.server import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race with other tests
    port = sock.getsockname()[1]
    app = create_app(store, admin_token=admin_token, scorer=scorer)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the labeling server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
