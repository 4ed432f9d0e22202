"""Rollout backends by name: what each one can do, and the one builder that reads a run's backend settings.

Every backend implements the two verbs of :class:`~selfcorrect.rollout.backends.GenerationBackend`:

==================  ====================================================  =========================================
verb                transformers (:class:`TransformersBackend`)            vllm (:class:`VLLMBackend`, experimental)
==================  ====================================================  =========================================
``generate``        selfcorrect's batched decode loop over the live        a colocated engine with prefix caching
                    policy module (finished rows leave the batch, the
                    next attempt starts from the previous one's KV cache)
``sync_weights``    nothing to do: it decodes the policy itself            loads the weights, resets the prefix cache
==================  ====================================================  =========================================

and declares its :class:`~selfcorrect.rollout.backends.Capabilities`, which the rest of the package asks instead of comparing names:

=====================  ============  ====  ====================================================================
capability             transformers  vllm  asked by
=====================  ============  ====  ====================================================================
``loads_own_weights``  no            yes   ``selfcorrect eval`` (no model to load), ``base_first_attempts``
``own_precision``      no            yes   the trainer (no bf16 autocast around generation)
``single_process``     no            yes   :func:`build_backend` (a data-parallel run is refused)
``shardable``          yes           no    :func:`selfcorrect.engines.layout_conflict`
=====================  ============  ====  ====================================================================

:func:`build_backend` is the only reader of ``rollout_backend`` and the ``vllm_*`` settings.  A new backend
(SGLang, say) is one file holding its class (``capabilities`` and ``from_settings``) plus one entry in
:data:`BACKENDS`.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .backends import Capabilities, GenerationBackend, TransformersBackend
from .vllm_backend import VLLMBackend


BACKENDS: dict[str, Any] = {"transformers": TransformersBackend, "vllm": VLLMBackend}
"""``rollout_backend`` name -> backend class (with ``capabilities`` and ``from_settings``)."""


def backend_capabilities(settings: Any) -> Capabilities:
    """The capabilities of the backend ``settings`` (a :class:`~selfcorrect.rollout.settings.SamplingSettings`:
    a train or eval config) names."""
    return _backend_class(settings.rollout_backend).capabilities


def build_backend(settings: Any, model, tokenizer, *, model_spec: str, dtype: str, seed: int,
                  processes: int = 1, generation_config=None) -> GenerationBackend:
    """The rollout backend of a run (``settings``: its train or eval config): training and evaluation both
    build theirs here.

    ``model`` is the live policy (None where the backend loads its own weights and nothing is in memory),
    ``model_spec`` the spec it was loaded from (what an engine starts from), ``dtype`` the precision
    generation runs in, ``processes`` the run's process count, ``generation_config`` the model's (its
    end-of-turn tokens; None: read from the model's files where a backend needs it).  Give an engine the
    policy's weights with :meth:`GenerationBackend.sync_weights`."""
    backend = _backend_class(settings.rollout_backend)
    if backend.capabilities.single_process and processes > 1:
        raise ConfigError(f"rollout_backend {backend.capabilities.name} runs one engine in a single process for "
                          "now; data-parallel runs use rollout_backend transformers")
    return backend.from_settings(settings, model, tokenizer, model_spec=model_spec, dtype=dtype, seed=seed,
                                 generation_config=generation_config)


def _backend_class(name: str):
    if name not in BACKENDS:
        raise ConfigError(f"unknown rollout backend {name!r}; choose {' or '.join(BACKENDS)}")
    return BACKENDS[name]
