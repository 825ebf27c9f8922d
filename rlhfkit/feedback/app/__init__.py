"""The human-feedback web app: people compare or rank model responses in the browser.

- ``storage``: the store (one class, SQLite or PostgreSQL) over ``db`` (the thin query layer) and
  ``schema`` (tables and migrations); ``items``: input records and labels as data;
  ``render``: markdown to sanitised HTML for the annotator page;
  ``active``: most-uncertain-first ordering from a reward model; ``report``: export, agreement and the labelling budget;
  ``service``: the operations the CLI and the server share; ``server``: the FastAPI app and its
  pages (``static/``); ``cli``: ``rlhfkit label serve | create-project | add-annotator | export | stats``.

See docs/labeling.md for the whole loop.
"""
