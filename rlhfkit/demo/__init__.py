"""``rlhfkit demo``: the whole pipeline on the built-in task, into one run folder.

What lives here: ``pipeline`` (the ordered stages and ``run_demo``), ``steps/`` (one module per group of
methods). What does not: any training loop or loss (``rlhfkit.train``), the task (``rlhfkit.tasks``),
evaluation (``rlhfkit.evaluate``); the demo only wires them together.
"""
