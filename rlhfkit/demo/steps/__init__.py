"""The method steps of ``rlhfkit demo``, one module per group of methods.

What lives here: ``labels_and_reward_model`` (stages 5 and 6: the simulated panel's labels and the
reward model), then the method steps the pipeline runs in the order of its ``METHOD_STEPS``:
``preference`` (DPO, IPO, ORPO, SimPO, KTO), ``rl`` (PPO, GRPO, RLOO), ``ai_feedback`` (RLAIF, CAI).
Each method step has ``NAMES`` and ``run(ctx) -> {method name: summary entry}``; a recipe (the demo's
tuned hyper-parameters) lives next to the step that uses it.
What does not: the training loops and losses (``rlhfkit.train``, ``rlhfkit.losses``), the shared
context (``rlhfkit.demo.context``) and the order of the stages (``rlhfkit.demo.pipeline``).
"""
