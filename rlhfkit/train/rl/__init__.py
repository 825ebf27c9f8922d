"""Online RL from a reward: PPO, GRPO and RLOO.

Each algorithm file (``ppo.py``, ``grpo.py``, ``rloo.py``) reads top to bottom: config, advantages,
loss, the loop with numbered steps. They share ``run.py`` (RLConfig with the batch sizes, the
set-up, the prompt stream and run folder), ``rollout.py`` (experience collection: generate, score,
old and reference log-probs), ``policy.py`` (actor, critic, reference), ``update.py`` (epochs ×
minibatches × micro-batches of one loss) and ``reward_sources.py`` (where the reward comes from).
"""
