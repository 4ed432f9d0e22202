"""Rollouts: multi-attempt episodes as exact token ids, and the backends that sample them.

* :mod:`.episodes` — :class:`Episode`/:class:`Attempt`, the chat-template-aware
  :class:`ConversationBuilder`, and :func:`collate` (training batches with
  per-attempt masks);
* :mod:`.backends` — :class:`SamplingParams`, the backend protocol, :class:`Capabilities` and the
  transformers decode loop; :mod:`.vllm_backend` — the vLLM engine;
* :mod:`.registry` — :data:`BACKENDS` and :func:`build_backend` (for training and evaluation alike);
* :mod:`.sampling` — :func:`sample_episodes` (``n`` samples × ``K`` attempts).
"""

from .backends import Capabilities, Generation, GenerationBackend, SamplingParams, TransformersBackend
from .episodes import Attempt, ConversationBuilder, Episode, collate, end_of_turn_ids
from .registry import BACKENDS, backend_capabilities, build_backend
from .sampling import attempt_progress, extend_episodes, new_episodes, sample_episodes

__all__ = [
    "BACKENDS", "Attempt", "Capabilities", "ConversationBuilder", "Episode", "Generation", "GenerationBackend",
    "SamplingParams", "TransformersBackend", "attempt_progress", "backend_capabilities", "build_backend", "collate",
    "end_of_turn_ids", "extend_episodes", "new_episodes", "sample_episodes",
]
