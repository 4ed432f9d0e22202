"""Rollouts: multi-attempt episodes as exact token ids, and the backends that sample them.

* :mod:`.episodes` — :class:`Episode`/:class:`Attempt`, the chat-template-aware
  :class:`ConversationBuilder`, and :func:`collate` (training batches with
  per-attempt masks);
* :mod:`.backends` — :class:`SamplingParams`, the backend protocol and
  :func:`make_backend` (transformers or vLLM, for training and evaluation alike);
* :mod:`.sampling` — :func:`sample_episodes` (``n`` samples × ``K`` attempts).
"""

from .backends import Generation, GenerationBackend, SamplingParams, TransformersBackend, make_backend
from .episodes import Attempt, ConversationBuilder, Episode, collate, end_of_turn_ids
from .sampling import attempt_progress, extend_episodes, new_episodes, sample_episodes

__all__ = [
    "Attempt", "ConversationBuilder", "attempt_progress", "Episode", "Generation", "GenerationBackend", "SamplingParams",
    "TransformersBackend", "collate", "end_of_turn_ids", "extend_episodes", "make_backend", "new_episodes",
    "sample_episodes",
]
