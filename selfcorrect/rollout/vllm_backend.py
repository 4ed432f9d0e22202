"""Generation through vLLM (experimental): ``pip install selfcorrect[vllm]``.

:class:`VLLMBackend` implements the same contract as
:class:`~selfcorrect.rollout.backends.TransformersBackend` — token ids in,
sampled ids out, ending with the end-of-turn token when one was sampled,
``truncated`` when the token limit was hit, results in input order, per-row
seeds — so episodes, masks and losses do not know which backend sampled them.

What vLLM adds:

* **Prefix caching.**  The engine runs with ``enable_prefix_caching=True``.
  An attempt-2 prompt *starts with* the whole attempt-1 conversation, and the
  samples of one problem share their prompt, so their KV blocks are computed
  once and reused.
* **Colocated training.**  The engine lives in the training process, on the
  same GPU (``gpu_memory_utilization`` caps its share).  After every
  optimizer step the trainer calls :meth:`VLLMBackend.sync_weights`: the
  policy's weights (LoRA merged in, :func:`selfcorrect.lora.merged_weights`)
  are loaded into the engine's model and the prefix cache is reset — cached
  KV blocks were computed by the old weights.

The engine is any object with vLLM's ``LLM`` interface (``generate``,
``reset_prefix_cache``, and a model with ``load_weights`` reachable through
:func:`_load_weights`); tests use a fake one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from .backends import Capabilities, Generation, SamplingParams


def _vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError("the vllm rollout backend needs vLLM: pip install 'selfcorrect[vllm]' "
                          "(or use the transformers backend)") from None
    return vllm


class VLLMBackend:
    """Batched sampling with a vLLM engine; see the module docstring."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        name="vllm", loads_own_weights=True, own_precision=True, single_process=True, shardable=False)

    @classmethod
    def from_settings(cls, settings, model, tokenizer, *, model_spec: str, dtype: str, seed: int,
                      generation_config=None) -> VLLMBackend:
        """:func:`~selfcorrect.rollout.registry.build_backend`'s constructor: an engine started from the files
        of ``model_spec`` (a LoRA checkpoint's base model: the caller syncs the merged weights), in ``dtype``,
        sized by the ``vllm_*`` settings; ``generation_config`` (None: the model's own file) names its
        end-of-turn tokens."""
        from ..lora import adapter_base, is_adapter_dir
        from ..models import engine_source, resolve_dtype
        from .episodes import end_of_turn_ids

        if is_adapter_dir(model_spec):
            model_spec = adapter_base(model_spec)
        source = engine_source(model_spec)
        if generation_config is None:
            generation_config = _generation_config(source)
        return cls.create(source, end_of_turn_ids(tokenizer, generation_config), dtype=dtype,
                          weight_dtype=None if dtype == "auto" else resolve_dtype(dtype), seed=seed,
                          gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                          max_model_len=settings.vllm_max_model_len or None)

    def __init__(self, engine: Any, eos_token_ids: set[int], sampling_params_cls: Callable[..., Any] | None = None,
                 weight_dtype: torch.dtype | None = None):
        self.engine = engine
        self.eos_token_ids = set(eos_token_ids)
        self.weight_dtype = weight_dtype
        """The engine's parameter dtype: synced weights are cast to it here (float32 policy, bf16 engine)."""
        self._sampling_params_cls = sampling_params_cls or _vllm().SamplingParams
        self.syncs = 0

    @classmethod
    def create(cls, model: str | Path, eos_token_ids: set[int], *, dtype: str = "auto",
               gpu_memory_utilization: float = 0.3, max_model_len: int | None = None, seed: int = 0,
               weight_dtype: torch.dtype | None = None, **engine_kwargs: Any) -> VLLMBackend:
        """Start a colocated engine for the Hugging Face model directory (or hub id) ``model``.

        ``weight_dtype``: the engine's parameter dtype (``dtype`` as a torch dtype; None for ``auto``)."""
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ConfigError(f"vllm gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        vllm = _vllm()
        # The engine must run in this process so that sync_weights can reach its model.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # Sampled tokens' log-probs after temperature / top-k / top-p: the distribution sampled from,
        # which the trainer's own log-probs are checked against (vLLM's default reports raw ones).
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        engine = vllm.LLM(model=str(model), dtype=dtype, seed=seed, enable_prefix_caching=True,
                          gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                          **engine_kwargs)
        return cls(engine, eos_token_ids, vllm.SamplingParams, weight_dtype=weight_dtype)

    def _sampling(self, params: SamplingParams, seed: int | None):
        return self._sampling_params_cls(
            n=1, temperature=float(params.temperature), top_p=float(params.top_p),
            top_k=int(params.top_k) if params.top_k else -1, max_tokens=params.max_new_tokens,
            stop_token_ids=sorted(self.eos_token_ids), seed=None if params.greedy else seed,
            skip_special_tokens=False, detokenize=False, logprobs=0)   # 0: the sampled token's only

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 progress: Callable[[int], None] | None = None,
                 seeds: Sequence[int] | None = None, states=None, keep_state: bool = False) -> list[Generation]:
        # ``states``/``keep_state`` are not needed: the engine's prefix cache finds the shared conversation itself.
        if not prompts:
            return []
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        sampling = [self._sampling(params, None if seeds is None else int(seeds[i]) % 2**63)
                    for i in range(len(prompts))]
        outputs = self.engine.generate(requests, sampling, use_tqdm=False)
        results = [self._generation(out.outputs[0], params) for out in outputs]
        if progress is not None:
            progress(len(results))
        return results

    def _generation(self, completion: Any, params: SamplingParams) -> Generation:
        """vLLM's completion as a :class:`Generation`: ids end with the end-of-turn token that stopped it."""
        ids = list(completion.token_ids)
        stop = completion.stop_reason
        if completion.finish_reason == "stop" and isinstance(stop, int) and (not ids or ids[-1] != stop):
            ids.append(stop)          # a stop_token_ids hit that the engine left out of token_ids
        ended = bool(ids) and ids[-1] in self.eos_token_ids
        ids = ids[: params.max_new_tokens]
        return Generation(ids=ids, truncated=not ended, logprobs=_sampled_logprobs(completion, ids))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load ``(Hugging Face name, tensor)`` pairs into the engine's model; drop stale cached prefixes."""
        _load_weights(self.engine, weights)
        if self.engine.reset_prefix_cache() is False:      # stale KV blocks would be served silently
            raise RuntimeError("vLLM did not reset its prefix cache after a weight update")
        self.syncs += 1

    def sync_weights(self, weights: Callable[[], Iterable[tuple[str, torch.Tensor]]]) -> None:
        """Make the engine sample from the weights ``weights()`` returns (e.g. a policy with its LoRA
        adapters merged in: :func:`selfcorrect.lora.merged_weights`)."""
        with torch.no_grad():
            named = list(weights())
            if self.weight_dtype is not None:
                named = [(name, t.to(self.weight_dtype)) for name, t in named]
            self.load_weights(named)


def _load_weights(engine: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load ``(name, tensor)`` pairs into the model inside ``engine`` (a vLLM ``LLM`` in this process, or a fake).

    vLLM's model runner re-processes weights after loading (fused q/k/v,
    backend-specific layouts), so the running model's own ``load_weights``
    fails on some platforms; ``model_runner.reload_weights`` (vLLM >= 0.11)
    does the whole load + post-processing.  It needs the engine core in this
    process: :meth:`VLLMBackend.create` sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0``.
    """
    weights = list(weights)
    if hasattr(engine, "load_weights"):                   # a fake engine
        engine.load_weights(weights)
        return
    worker = getattr(engine.llm_engine.model_executor, "driver_worker", None)
    if worker is None:
        raise ConfigError("vllm backend: the engine runs in another process, so its weights cannot be "
                          "updated; set VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating it")
    runner = getattr(worker, "worker", worker).model_runner
    runner.reload_weights(weights_iterator=iter(weights))


def _sampled_logprobs(completion: Any, ids: list[int]) -> list[float] | None:
    """The log-prob vLLM reported for each sampled id, or None when it did not report one for every id."""
    per_token = getattr(completion, "logprobs", None)
    if not per_token or len(per_token) < len(ids):
        return None
    out = []
    for token, options in zip(ids, per_token):
        entry = options.get(token) if options else None
        if entry is None:
            return None
        out.append(float(getattr(entry, "logprob", entry)))
    return out


def _generation_config(source: str):
    """The model's generation config (its own end-of-turn tokens), or None where it has none."""
    from transformers import GenerationConfig

    from ..hub import hub_unreachable

    try:
        return GenerationConfig.from_pretrained(source, local_files_only=hub_unreachable())
    except OSError:
        return None
