"""Run ``rlhfkit serve`` on loopback in a background thread: for tests, notebooks and scripts.

    with running_model_server([policy_dir, reward_dir]) as base_url:
        judge = HTTPJudge(base_url + "/v1", ...)
        HTTPRewardSource(base_url + "/score").score(prompts, responses)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rlhfkit.serve.loopback import serve_on_loopback


@contextmanager
def running_model_server(model_dir_or_dirs, *, served_name: str | None = None, api_key: str | None = None,
                         precision: str = "fp32", device: str = "auto", max_new_tokens_limit: int = 1024,
                         max_context: int | None = None, timeout_s: float = 30.0):
    """Load the folder(s) (a causal LM and/or a reward model), serve them on 127.0.0.1 at a free
    port and yield the base URL (no trailing slash; OpenAI clients take ``base_url + "/v1"``).
    The server stops on exit. ``max_context`` lets a judge's long prompt through a tiny test model
    (whose max_position_embeddings is small)."""
    from rlhfkit.serve.server import create_app, load_backends

    dirs = [model_dir_or_dirs] if isinstance(model_dir_or_dirs, (str, Path)) else list(model_dir_or_dirs)
    backends = load_backends(dirs, served_name=served_name, precision=precision, device=device,
                             max_context=max_context)
    app = create_app(backends, api_key=api_key, max_new_tokens_limit=max_new_tokens_limit)
    with serve_on_loopback(app, timeout_s=timeout_s, what="model server") as base_url:
        yield base_url


def restartable_model_server(model_dir_or_dirs, **options):
    """A :class:`~rlhfkit.serve.loopback.LoopbackServer` for ``rlhfkit serve`` on a fixed loopback
    port, not started yet: ``start()`` loads the folder(s) afresh (weights version 0), ``stop()``
    takes it down as a crash would. ``options``: those of :func:`running_model_server`."""
    from rlhfkit.serve.loopback import LoopbackServer
    from rlhfkit.serve.server import create_app, load_backends

    dirs = [model_dir_or_dirs] if isinstance(model_dir_or_dirs, (str, Path)) else list(model_dir_or_dirs)
    limit = options.pop("max_new_tokens_limit", 1024)
    api_key = options.pop("api_key", None)

    def make_app():
        return create_app(load_backends(dirs, **options), api_key=api_key, max_new_tokens_limit=limit)

    return LoopbackServer(make_app, what="model server")
