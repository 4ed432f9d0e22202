"""Engines: how the policy, its gradients and Adam state are laid out over processes (see :mod:`.base`).

:func:`make_engine` is the one place that maps ``sharding`` × ``sharding_engine``
(or what ``accelerate launch`` asks for) to an engine:

=============  ===================  =========================================
``sharding``   ``sharding_engine``  engine
=============  ===================  =========================================
none           (any)                :class:`.replicated.ReplicatedEngine`
zero2 / zero3  fsdp                 :class:`.fsdp.FSDP2Engine`
zero2 / zero3  deepspeed            :class:`.deepspeed.DeepSpeedEngine`
=============  ===================  =========================================
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError
from .base import CheckpointParts, Engine, frozen, frozen_copy
from ..rollout.registry import backend_capabilities
from .replicated import ReplicatedEngine

__all__ = ["ENGINES", "SHARDINGS", "CheckpointParts", "Engine", "frozen", "frozen_copy", "layout_conflict",
           "make_engine", "sharding_from_launcher"]


def layout_conflict(config, sharding: str, engine: str) -> str | None:
    """Why ``sharding`` on ``engine`` cannot run with ``config`` (None when it can)."""
    if sharding == "none":
        return None
    if config.lora_r and engine == "deepspeed":
        return "LoRA with DeepSpeed sharding is not supported yet (use sharding_engine fsdp, or sharding: none)"
    backend = backend_capabilities(config)
    if not backend.shardable:
        return f"rollout_backend {backend.name} cannot be combined with sharding yet (use sharding: none)"
    if any(phase.restart for phase in config.schedule()) and (engine == "deepspeed" or config.lora_r):
        return ("method star restarts each round from the initial model, which is not supported yet with "
                f"{'DeepSpeed' if engine == 'deepspeed' else 'LoRA'} sharding (use sharding_engine fsdp "
                "without LoRA, or sharding: none)")
    return None


def make_engine(config, dist, device: torch.device) -> Engine:
    """The engine ``config`` (and the launcher's environment) asks for, its constraints checked."""
    sharding, name = sharding_from_launcher(config.sharding, config.sharding_engine)
    engine: Engine
    if sharding == "none":
        engine = ReplicatedEngine(dist, device, config.max_grad_norm, name)
    elif name == "fsdp":
        from .fsdp import FSDP2Engine

        engine = FSDP2Engine(dist, device, config.max_grad_norm, sharding)
    else:
        from .deepspeed import DeepSpeedEngine

        engine = DeepSpeedEngine(dist, device, config.max_grad_norm, sharding, bf16=config.dtype == "bfloat16",
                                 autocast=config.autocast == "bf16")
    engine.check(config)
    # Only where forward passes are not collectives (Engine.can_share_prefixes): a sharded layout's
    # processes must run the same passes.
    engine.shared_prefix = config.score_shared_prefix and engine.can_share_prefixes
    return engine


SHARDINGS = ("none", "zero2", "zero3")
ENGINES = ("fsdp", "deepspeed")


def sharding_from_launcher(configured: str, engine: str) -> tuple[str, str]:
    """(sharding, engine): the configured ones, else what ``accelerate launch`` with an FSDP or DeepSpeed config asks for.

    ``accelerate launch --config_file configs/accelerate/fsdp_zero3.yaml`` sets
    ``ACCELERATE_USE_FSDP=true`` and ``FSDP_RESHARD_AFTER_FORWARD`` (or, for
    FSDP1-style configs, ``FSDP_SHARDING_STRATEGY``); a DeepSpeed config sets
    ``ACCELERATE_USE_DEEPSPEED=true`` and ``ACCELERATE_DEEPSPEED_ZERO_STAGE``.
    """
    if configured != "none":
        return configured, engine
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return _deepspeed_launch(env), "deepspeed"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return "none", engine
    strategy = env.get("FSDP_SHARDING_STRATEGY", "").upper()
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "").lower()
    if reshard == "false" or strategy in ("2", "SHARD_GRAD_OP"):
        return "zero2", "fsdp"
    if strategy and strategy not in ("1", "FULL_SHARD"):
        raise ConfigError(f"FSDP sharding strategy {strategy} is not supported: use FULL_SHARD (zero3) or "
                          "SHARD_GRAD_OP (zero2), e.g. configs/accelerate/fsdp_zero3.yaml")
    return "zero3", "fsdp"


def _deepspeed_launch(env) -> str:
    """The sharding an accelerate DeepSpeed config asks for; settings selfcorrect does not drive are errors."""
    hint = "use configs/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml"
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise ConfigError("a DeepSpeed JSON config (deepspeed_config_file) is not read: selfcorrect builds the "
                          f"DeepSpeed config from its own training config; {hint}")
    for key in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if env.get(key, "none").lower() not in ("none", ""):
            raise ConfigError(f"DeepSpeed offloading ({key}={env[key]}) is not supported yet; {hint}")
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    if stage not in ("2", "3"):
        raise ConfigError(f"DeepSpeed ZeRO stage {stage or '(unset)'} is not supported: selfcorrect runs stages "
                          f"2 and 3; {hint}")
    return f"zero{stage}"
