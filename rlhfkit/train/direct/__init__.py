"""Direct preference methods: train a policy on preferences without a reward model or sampling.

``dpo.py`` (DPO, IPO, hinge, robust), ``orpo.py``, ``simpo.py`` and ``kto.py`` each hold a config,
the glue from log-probs to its pure loss in :mod:`rlhfkit.losses`, and its ``run_*`` function; they
share ``preference.py`` (PreferenceConfig, Objective, train_preference) and ``batches.py`` (records
→ examples, the one batched forward, the reference cache). This package exports every method's
config and run function, so a caller may pick one by name (``getattr(direct, "DPOConfig")``).
"""

from rlhfkit.train.direct.dpo import DPOConfig, run_dpo
from rlhfkit.train.direct.kto import KTOConfig, run_kto
from rlhfkit.train.direct.orpo import ORPOConfig, run_orpo
from rlhfkit.train.direct.simpo import SimPOConfig, run_simpo

__all__ = ["DPOConfig", "KTOConfig", "ORPOConfig", "SimPOConfig", "run_dpo", "run_kto", "run_orpo", "run_simpo"]
