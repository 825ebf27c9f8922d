"""Constitutional AI (Bai et al. 2022): a constitution file, the critique → revision phase, and the
AI-feedback phase (``rlhfkit constitution``)."""

from rlhfkit.feedback.constitution.spec import (DEFAULT_CONSTITUTION, ComparisonPrinciple, Constitution,
                                                ConstitutionError, Principle, load_constitution)
from rlhfkit.feedback.constitution.supervised import (CAIExample, critique_and_revise, prompt_messages,
                                                      revision_pairs, sft_records)

__all__ = ["DEFAULT_CONSTITUTION", "Constitution", "Principle", "ComparisonPrinciple", "ConstitutionError",
           "load_constitution", "CAIExample", "critique_and_revise", "prompt_messages", "sft_records",
           "revision_pairs"]
