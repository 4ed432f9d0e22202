"""LoRA through PEFT: adapters on the policy, the base model (adapter off) as the reference.

With ``lora_r > 0`` the trainer wraps the policy in a PEFT ``LoraConfig``
adapter and trains only the adapter.  The KL reference π_ref is the *same*
model with the adapter disabled (``PeftModel.disable_adapter()``), so there is
no second copy of the weights in memory.  Checkpoints hold the adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) and the tokenizer;
:func:`selfcorrect.models.load_model` loads such a directory as base + adapter
merged, and training ends by exporting merged weights to ``RUN/merged/``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
import torch

from .errors import ConfigError, SelfCorrectError

ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA needs the peft package: pip install peft") from None
    return peft


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model a LoRA checkpoint was trained on (``base_model_name_or_path`` of its adapter config)."""
    import json

    base = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise SelfCorrectError(f"LoRA checkpoint {path}: {ADAPTER_CONFIG} names no base model")
    return str(base)


def apply_lora(model, r: int, alpha: float, dropout: float, target_modules: list[str]):
    """Wrap ``model`` with a trainable LoRA adapter (``target_modules == ["all-linear"]``: every linear layer)."""
    peft = _peft()
    targets = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                             task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"LoRA target modules {target_modules}: {err}") from None


def load_adapter(model, checkpoint: str | Path, trainable: bool):
    """``model`` (the base) with the adapter saved in ``checkpoint``."""
    return _peft().PeftModel.from_pretrained(model, str(checkpoint), is_trainable=trainable)


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def base_model_context(model):
    """Context in which ``model`` computes as its base model (adapter off); a no-op for plain models."""
    return model.disable_adapter() if is_peft(model) else contextlib.nullcontext()


def export_merged(model, tokenizer, out: str | Path) -> Path:
    """Save base + adapter merged into plain weights (loadable without peft) to ``out``.

    ``model``: a PEFT model, or already merged weights (a LoRA checkpoint loaded by ``load_model``).
    """
    import copy

    merged = copy.deepcopy(model).merge_and_unload() if is_peft(model) else model
    out = Path(out)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def merged_weights(model) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the model as plain weights, with the LoRA update added where there is one.

    Names are the base model's own (``model.layers.0.self_attn.q_proj.weight``),
    so an inference engine that loads Hugging Face checkpoints accepts them.
    The merge is computed out of place (``W + ΔW``): merging into the policy and
    unmerging after would round bf16 base weights a little more at every sync.
    """
    if not is_peft(model):
        return [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "lora_A"):
            for adapter in module.active_adapters:       # (embedding adapters live in lora_embedding_A)
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    delta = module.get_delta_weight(adapter).detach()
                    key = f"{name}.weight"
                    deltas[key] = deltas[key] + delta if key in deltas else delta
    weights = []
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        tensor = tensor.detach()
        if plain in deltas:
            tensor = tensor + deltas[plain].to(tensor.dtype)
        weights.append((plain, tensor))
    return weights


def save_trainable(model, path: Path) -> None:
    """The trainable parameters (a LoRA adapter) as they are now, to ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}, tmp)
    tmp.replace(path)


@torch.no_grad()
def load_trainable(model, path: Path) -> None:
    """Put back trainable parameters saved by :func:`save_trainable`."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.copy_(saved[name])
