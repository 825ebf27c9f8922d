"""Built-in tasks with a known gold reward (see ``rlhfkit.tasks.facts``)."""

from .facts import FactsTask
from .panel import Annotator

TASKS = {"facts": FactsTask}
"""task name -> class; each has ``from_seed(seed, **options)`` and ``from_dict(d)``"""

__all__ = ["FactsTask", "Annotator", "TASKS"]
