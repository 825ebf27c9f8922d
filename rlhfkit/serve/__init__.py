"""``rlhfkit serve``: a model folder over HTTP, as a local judge or a remote reward.

A causal LM answers OpenAI's ``/v1/chat/completions`` (with logprobs), so the HTTP judge and any
OpenAI client can use it; a reward model (or ensemble) answers ``/score``, the protocol of
:class:`rlhfkit.train.rl.reward_sources.HTTPRewardSource` (PPO's ``reward.url``). FastAPI and
uvicorn come with ``pip install 'rlhfkit[app]'``; nothing here imports them until a server is built.
"""

from rlhfkit.serve.testing import restartable_model_server, running_model_server

__all__ = ["restartable_model_server", "running_model_server"]
