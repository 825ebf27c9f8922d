"""The human-feedback web app: people compare or rank model responses in the browser.

- ``storage``: SQLite (WAL) store; ``items``: input records and labels as data;
  ``active``: most-uncertain-first ordering from a reward model; ``report``: export and agreement;
  ``service``: the operations the CLI and the server share; ``server``: the FastAPI app and its
  pages (``static/``); ``cli``: ``rlhfkit label serve | create-project | add-annotator | export | stats``.

See docs/labeling.md for the whole loop.
"""
