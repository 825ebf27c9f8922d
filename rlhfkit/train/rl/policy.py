"""The models an online RL method runs: the actor (policy, optionally with a value function) and the
frozen reference.

Conventions (Huang et al. 2024, "The N+ implementation details of RLHF with PPO"):
- dropout is switched off in every trained model, so the log-probs recomputed in the first PPO
  minibatch equal those of the rollout (ratio exactly 1, approxkl 0);
- the old log-probs are recomputed with the training forward pass (not taken from ``generate``),
  with the logits divided by the sampling temperature, as the reference log-probs are;
- log-probs are computed only on response positions: (B, R), R = the longest response.

Every forward goes through :mod:`rlhfkit.models.forward` (positions, completion-only head, values).
Not here: which value function PPO builds (:func:`rlhfkit.train.rl.ppo.build_value`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.models import loading as models_loading
from rlhfkit.models.forward import policy_forward, sequence_logprobs, token_values
from rlhfkit.models.loading import is_peft, load_causal_lm


@dataclass
class Outputs:
    logprobs: torch.Tensor  # (B, R) 0 on padding
    entropy: torch.Tensor | None  # (B, R)
    values: torch.Tensor | None  # (B, R) value of the state before each response token


class ActorCritic:
    """The modules that are trained: the policy and optionally a value function, either a separate
    critic (initialised from a reward model, Ouyang et al. 2022 §3.5) or a linear value head on the
    policy's last hidden state (one shared backbone, as in Ziegler et al. 2019's head variant)."""

    def __init__(self, policy, *, critic=None, value_head: torch.nn.Linear | None = None,
                 disable_dropout: bool = True):
        if critic is not None and value_head is not None:
            raise ValueError("ActorCritic takes a critic or a value head, not both")
        self.policy, self.critic, self.value_head = policy, critic, value_head
        if disable_dropout:
            for module in self.modules().values():
                models_loading.disable_dropout(module)

    def modules(self) -> dict[str, torch.nn.Module]:
        found = {"policy": self.policy, "critic": self.critic, "value_head": self.value_head}
        return {k: m for k, m in found.items() if m is not None}

    @property
    def has_values(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        for module in self.modules().values():
            module.train(mode)

    def forward(self, input_ids, attention_mask, completion_mask, context_length: int, *, temperature: float,
                entropy: bool = False, values: bool = True) -> Outputs:
        """Response-position log-probs (and entropy, values). Inputs (B, L) with L = P + R."""
        P = context_length
        use_head = self.value_head is not None and values
        out = policy_forward(self.policy, input_ids, attention_mask, completion_mask, temperature=temperature,
                             entropy=entropy, hidden=use_head)
        head_values = None
        if use_head:
            head_values = self.value_head(out.hidden)[..., 0].float()[:, P - 1:-1]  # (B, R)
        if self.critic is not None and values:
            head_values = token_values(self.critic, input_ids, attention_mask)[:, P - 1:-1]  # (B, R)
        ent = None if out.entropy is None else out.entropy[:, P - 1:]
        return Outputs(logprobs=out.logprobs[:, P - 1:], entropy=ent, values=head_values)


class Reference:
    """The frozen SFT policy. With LoRA it is the policy with its adapter disabled (no second copy
    of the weights); otherwise a frozen copy loaded from the same folder."""

    def __init__(self, policy, model_path: str):
        self.model = None
        if not is_peft(policy):
            self.model = load_causal_lm(model_path).to(next(policy.parameters()).device)
            self.model.requires_grad_(False).eval()
            models_loading.disable_dropout(self.model)

    @torch.no_grad()
    def logprobs(self, policy, input_ids, attention_mask, completion_mask, context_length: int, *,
                 temperature: float) -> torch.Tensor:
        """(B, R) reference log-probs of the response tokens."""
        if self.model is not None:
            out = sequence_logprobs(self.model, input_ids, attention_mask, completion_mask, temperature=temperature)
        else:
            with policy.disable_adapter():
                out = sequence_logprobs(policy, input_ids, attention_mask, completion_mask, temperature=temperature)
        return out[:, context_length - 1:]
