"""How rollouts are sampled, declared once: training (``TrainConfig``) and evaluation (``EvalConfig``)
both inherit these fields, under the same names, and override only their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from .backends import DECODE_MODES, MAX_NEW_TOKENS, SamplingParams
from .registry import BACKENDS


@dataclass
class SamplingSettings:
    """The sampling knobs of a run (a base of the train and eval configs)."""

    temperature: float = 1.0
    """Sampling temperature; 0 = greedy (evaluation only).  Training samples and scores its rollouts at this
    temperature (the paper's 1.0); ``selfcorrect eval`` defaults to greedy (``GREEDY``), and the evaluations
    inside training are always greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off; training refuses truncated sampling)."""
    top_k: int = 0
    """Top-k sampling (0 = off; training refuses truncated sampling)."""
    max_new_tokens: int = MAX_NEW_TOKENS
    """Token limit per attempt; attempts that hit it count as truncated."""
    generation_batch_size: int = 64
    """Sequences generated per batch (transformers backend)."""
    decode: str = "dynamic"
    """KV cache of the transformers backend's decode steps: dynamic (grows; finished rows leave at once), static (preallocated, fixed bucketed batch sizes; exact, not faster on a CPU) or graphs (static + CUDA graphs via torch.compile; CUDA only, opt-in until verified on a GPU run)."""
    rollout_backend: str = "transformers"
    """Who samples: transformers (selfcorrect's batched decode loop) or vllm (experimental, `pip install 'selfcorrect[vllm]'`: an engine with prefix caching; training pushes the policy's weights into it after every optimizer step)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory the vLLM engine may take (its weights + KV cache)."""
    vllm_max_model_len: int = 0
    """Longest sequence (prompt + all attempts) the vLLM engine plans its KV cache for; 0 = the model's own limit."""

    # Old field names (EvalConfig's, before they were shared) that still work, with a message, for one release.
    RENAMED: ClassVar[dict[str, str]] = {"backend": "rollout_backend", "batch_size": "generation_batch_size"}

    def check_sampling(self) -> None:
        """One clear error for a bad sampling value (each config calls it from ``__post_init__``)."""
        if self.generation_batch_size < 1:
            raise ConfigError(f"generation_batch_size must be >= 1, got {self.generation_batch_size!r}")
        if self.decode not in DECODE_MODES:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if self.decode == "graphs" and not torch.cuda.is_available():
            raise ConfigError("decode graphs needs a CUDA GPU (none is visible); use decode static or dynamic")
        if self.rollout_backend not in BACKENDS:
            raise ConfigError(f"rollout_backend must be one of {', '.join(BACKENDS)}, got {self.rollout_backend!r}")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization!r}")
        if self.vllm_max_model_len < 0:
            raise ConfigError(f"vllm_max_model_len must be >= 0, got {self.vllm_max_model_len!r}")
        self.sampling_params()

    def sampling_params(self, temperature: float | None = None) -> SamplingParams:
        """The per-attempt sampling parameters (``temperature`` overrides the configured one)."""
        return SamplingParams(temperature=self.temperature if temperature is None else temperature,
                              top_p=self.top_p, top_k=self.top_k, max_new_tokens=self.max_new_tokens)
