"""``rlhfkit demo``: the whole pipeline on the built-in task, into one run folder.

What lives here: ``pipeline`` (the stages in their order, ``run_demo``), ``context`` (``DemoConfig``,
``DemoContext`` and the helpers every step shares) and ``steps/`` (the panel's labels and the reward
model, then one module per group of methods). What does not: any training loop or loss
(``rlhfkit.train``, ``rlhfkit.losses``), the task (``rlhfkit.tasks``), evaluation
(``rlhfkit.evaluate``): the demo only wires them together on the built-in task.
"""
