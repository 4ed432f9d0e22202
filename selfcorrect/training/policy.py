"""The models a run holds: the policy it trains and π_ref, the frozen initial model its KL terms anchor to.

Under LoRA there is no second copy: π_ref is the policy with its adapter disabled
(:func:`~selfcorrect.lora.base_model_context`), so ``reference`` is ``None``.
"""

from __future__ import annotations

from pathlib import Path

from ..engines import frozen, frozen_copy
from ..lora import apply_lora, load_adapter
from ..models import load_model
from .config import TrainConfig


def load_policy(config: TrainConfig, device, checkpoint: Path | None = None):
    """``(policy, reference)``: the model to train, in train mode (from ``checkpoint`` when resuming), and π_ref
    (``None`` under LoRA)."""
    policy = load_model(config.model, dtype=config.dtype, device=device)
    if config.lora_r:
        reference = None
        policy = (load_adapter(policy, checkpoint, trainable=True) if checkpoint is not None else
                  apply_lora(policy, config.lora_r, config.lora_alpha, config.lora_dropout,
                             config.lora_target_modules))
    else:
        reference = frozen_copy(policy)                   # π_ref: the initial model, never updated
        if checkpoint is not None:                        # resume: the policy continues from the checkpoint
            policy = load_model(str(checkpoint), dtype=config.dtype, device=device)
    if config.gradient_checkpointing and config.lora_r:
        policy.enable_input_require_grads()               # frozen embeddings: let checkpointed layers get grads
    if config.gradient_checkpointing:
        enable = (getattr(policy, "activation_checkpointing_enable", None) or
                  policy.gradient_checkpointing_enable)   # renamed in transformers 5.x
        enable()
    policy.config.use_cache = True
    policy.train()
    return policy, reference


def base_model(config: TrainConfig, device):
    """A frozen model laid out like the policy: the base model (with the adapter layout under LoRA)."""
    model = load_model(config.model, dtype=config.dtype, device=device)
    if config.lora_r:
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    return frozen(model)
