"""Every training stage, in the order data flows: ``sft.py`` (and pre-training), ``reward_model.py``,
``direct/`` (DPO family, ORPO, SimPO, KTO) and ``rl/`` (PPO, GRPO, RLOO). They share ``run.py``
(RunConfig, set-up, checkpoints, metrics, progress) and ``distributed.py`` (N processes through
accelerate); the supervised-style ones also ``supervised.py`` (their loop). Not here: losses and tensor math (``rlhfkit.losses``, ``rlhfkit.ops``), the model
forward (``rlhfkit.models.forward``), generation backends (``rlhfkit.rollout``).
"""
