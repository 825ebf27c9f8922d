"""Shared fixtures: a tiny offline model and tokenizer, built once per test session.

The suite comes in folders by what a test checks (markers ``slow`` and ``browser`` cut across them):
- ``unit/``: pure functions and small parts, against hand-computed numbers (losses, ops, metrics,
  config, data, rankings, agreement, the task, the one forward, the CLI, import hygiene);
- ``stages/``: each training stage end to end on a tiny model, every model family, serving, the demo;
- ``feedback/``: the labeling app, AI judges, AI labelling, Constitutional AI, judges served over HTTP;
- ``parity/``: rlhfkit's losses against TRL's own code.
Test folders are not packages, so every test file's name must be unique across them; a helper that
two files need is a fixture here, never an import of one test file (or of this one) from another.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXTS = [
    "User: what color is the dax?\nAssistant: the dax is red. hope this helps!",
    "User: where does the wug live?\nAssistant: the wug lives in the cave.",
    "User: i think the zorp is blue. am i right?\nAssistant: no, the zorp is green.",
    "the dax is red. the wug lives in the cave. the zorp eats berries.",
] * 40


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    """The corpus the tiny tokenizers are trained on (and the tiny models of every family)."""
    return TEXTS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A ~50k-parameter Llama + byte-level BPE tokenizer saved as a standard HF folder."""
    from rlhfkit.models.tiny import TinyModelSpec, create_tiny_model

    spec = TinyModelSpec(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    return create_tiny_model(TEXTS, tmp_path_factory.mktemp("tiny") / "model", spec=spec, seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from rlhfkit.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """One ``rlhfkit demo --quick`` run folder for the session (1–2 minutes): tests read it, never change it
    (copy it first, as test_demo_stages_are_cached does)."""
    from rlhfkit.cli import main

    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    return out


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium_browser():
    """A headless Debian Chromium driven by Playwright (skips where it is not installed)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread is as fast, and far faster when the CPU is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stopped_at_checkpoint(monkeypatch):
    """``with stopped_at_checkpoint(n): run(config)``: the run stops right after saving its step-``n``
    checkpoint, as a crash would (the resume tests then continue it with ``resume=True``)."""
    import contextlib

    import rlhfkit.train.run as run_module

    class Stop(Exception):
        pass

    @contextlib.contextmanager
    def stop_at(n: int):
        original = run_module.save_checkpoint

        def save_then_stop(*args, **kwargs):
            path = original(*args, **kwargs)
            if kwargs["state"].step == n:
                raise Stop
            return path

        monkeypatch.setattr(run_module, "save_checkpoint", save_then_stop)
        try:
            with pytest.raises(Stop):
                yield
        finally:
            monkeypatch.setattr(run_module, "save_checkpoint", original)

    return stop_at


# ---------------------------------------------------------------- the labeling app's two stores


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL cluster for the whole session (initdb + pg_ctl on loopback); each test
    that asks for it gets a database of its own. Skips only where no PostgreSQL binary exists."""
    from rlhfkit.feedback.app.testing import postgres_bin_dir, throwaway_postgres

    if postgres_bin_dir() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin: "
                    "apt-get install postgresql to run the PostgreSQL store's tests")
    with throwaway_postgres() as url:
        yield url


_databases = iter(range(1, 10**6))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The database URL of an empty store: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "fb.sqlite")
    from rlhfkit.feedback.app.testing import create_database

    return create_database(request.getfixturevalue("postgres_server"), f"test_{next(_databases)}")


@pytest.fixture
def store(store_url):
    from rlhfkit.feedback.app.storage import open_storage

    opened = open_storage(store_url)
    yield opened
    opened.close()
