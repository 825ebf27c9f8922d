"""Serve an ASGI app on 127.0.0.1 in a background thread: what the test helpers of the labeling
app and of ``rlhfkit serve`` both do."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager


@contextmanager
def serve_on_loopback(app, *, timeout_s: float = 10.0, what: str = "server"):
    """Start ``app`` with uvicorn on a free loopback port; yield ``http://127.0.0.1:PORT``; stop on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race with other tests
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the {what} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


class LoopbackServer:
    """An app on a fixed loopback port that can be stopped and started again, as a crash and a
    restart would (the rollout-server tests kill it mid-run). ``make_app()`` builds a fresh app at
    every start: a restarted server loads its model folder again."""

    def __init__(self, make_app, *, port: int = 0, timeout_s: float = 30.0, what: str = "server"):
        self.make_app, self.timeout_s, self.what = make_app, timeout_s, what
        if port == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server = self._thread = self._sock = None

    def start(self) -> str:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port of the stopped server, at once
        sock.bind(("127.0.0.1", self.port))
        server = uvicorn.Server(uvicorn.Config(self.make_app(), log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"the {self.what} did not start")
            time.sleep(0.02)
        self._server, self._thread, self._sock = server, thread, sock
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(self.timeout_s)
        self._sock.close()
        self._server = self._thread = self._sock = None
