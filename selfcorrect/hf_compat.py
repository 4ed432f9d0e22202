"""Differences between transformers versions, in one place (a leaf module: it imports nothing of ours)."""

from __future__ import annotations


def cache_argument(model) -> str:
    """The forward() keyword of the KV cache: ``cache`` (transformers >= 5.20) or ``past_key_values``."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model   # PEFT wraps forward(**kwargs)
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def full_attention_only(config) -> bool:
    """Every layer attends to all earlier tokens (no sliding window, no linear attention)."""
    config = getattr(config, "text_config", None) or config
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))
