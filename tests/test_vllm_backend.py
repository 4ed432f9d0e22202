"""The vLLM backend's contract, against a fake engine with vLLM's ``LLM`` interface (tiny model).

The fake decodes with a transformers model, so "same tokens as the
transformers backend" is a real check of our request/response handling, and
it refuses what a real engine would get wrong silently: unknown weight names,
and generating from a prefix cache that predates the last weight update.
A test against real vLLM runs where ``.venv-vllm`` holds one (``make setup-vllm``).
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from selfcorrect.errors import ConfigError
from selfcorrect.lora import apply_lora, export_merged, merged_weights
from selfcorrect.rollout import (ConversationBuilder, SamplingParams, TransformersBackend, collate,
                                 sample_episodes)
from selfcorrect.models import engine_source
from selfcorrect.rollout.vllm_backend import VLLMBackend
from selfcorrect.tasks.base import Problem, Task
from selfcorrect.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


class FakeSamplingParams(SimpleNamespace):
    """vLLM's ``SamplingParams`` keywords (an unknown keyword fails like it would in vLLM)."""

    FIELDS = {"n", "temperature", "top_p", "top_k", "max_tokens", "stop_token_ids", "seed",
              "skip_special_tokens", "detokenize", "logprobs"}

    def __init__(self, **kwargs):
        unknown = set(kwargs) - self.FIELDS
        assert not unknown, f"not a vLLM SamplingParams field: {unknown}"
        super().__init__(**kwargs)


class FakeLLM:
    """``generate`` / ``reset_prefix_cache`` / ``load_weights`` of a colocated vLLM engine, on a transformers model.

    ``include_stop_token=False`` mimics engines that leave the stop token out of
    ``token_ids`` (reporting it only as ``stop_reason``).
    """

    def __init__(self, model, include_stop_token: bool = True):
        self.model = copy.deepcopy(model).eval()
        self.include_stop_token = include_stop_token
        self.loads = 0
        self.resets = 0
        self.stale_cache = False
        self.requests: list[tuple[list[int], FakeSamplingParams]] = []

    def load_weights(self, weights):
        own = self.model.state_dict()
        names = [name for name, _ in weights]
        unknown = [n for n in names if n not in own]
        assert not unknown, f"engine got unknown weight names {unknown[:3]}"
        assert set(names) >= {n for n in own if not n.endswith("lm_head.weight")}, "weights missing"
        with torch.no_grad():
            for name, tensor in weights:
                own[name].copy_(tensor)
        self.loads += 1
        self.loaded_dtypes = {tensor.dtype for _, tensor in weights}
        self.stale_cache = True

    def reset_prefix_cache(self) -> bool:
        self.resets += 1
        self.stale_cache = False
        return True

    @torch.no_grad()
    def generate(self, requests, sampling_params, use_tqdm=True):
        assert not self.stale_cache, "generate() after load_weights() without reset_prefix_cache()"
        assert len(requests) == len(sampling_params)
        device = next(self.model.parameters()).device
        outputs = []
        for request, sp in zip(requests, sampling_params):
            ids = list(request["prompt_token_ids"])
            self.requests.append((ids, sp))
            generator = None if sp.seed is None else torch.Generator(device=device).manual_seed(sp.seed)
            out: list[int] = []
            logprobs: list[dict] = []      # vLLM's shape: one {token id: Logprob} per generated token
            context = torch.tensor([ids], device=device)
            while len(out) < sp.max_tokens:
                logits = self.model(input_ids=context).logits[0, -1].float()
                if sp.temperature == 0:
                    token = int(logits.argmax())
                    processed = torch.log_softmax(logits, -1)
                else:
                    processed = torch.log_softmax(logits / sp.temperature, -1)
                    token = int(torch.multinomial(processed.exp(), 1, generator=generator))
                out.append(token)
                logprobs.append({token: SimpleNamespace(logprob=float(processed[token]))})
                context = torch.cat([context, torch.tensor([[token]], device=device)], dim=1)
                if token in sp.stop_token_ids:
                    break
            stopped = bool(out) and out[-1] in sp.stop_token_ids
            token_ids = out if self.include_stop_token or not stopped else out[:-1]
            completion = SimpleNamespace(token_ids=token_ids, finish_reason="stop" if stopped else "length",
                                         stop_reason=out[-1] if stopped else None,
                                         logprobs=logprobs if sp.logprobs is not None else None)
            outputs.append(SimpleNamespace(outputs=[completion]))
        return outputs


def _fake_backend(model, tok, **kwargs) -> VLLMBackend:
    from selfcorrect.rollout import end_of_turn_ids

    return VLLMBackend(FakeLLM(model, **kwargs), end_of_turn_ids(tok), FakeSamplingParams)


def _prompts(tok):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in
            ["hello", "a much longer prompt with many more tokens in it", "two words", "hello"]]


@pytest.mark.parametrize("include_stop_token", [True, False])
def test_greedy_tokens_truncation_and_order_match_the_transformers_backend(tiny_model, include_stop_token):
    model, tok = tiny_model
    prompts = _prompts(tok)
    eos = tok.eos_token_id
    probe = TransformersBackend(model, tok).generate(prompts[:1], SamplingParams(max_new_tokens=12))[0]
    stop = probe.ids[2]                                  # make row 0 end early on an end-of-turn token
    reference = TransformersBackend(model, tok, eos_token_ids={eos, stop}).generate(
        prompts, SamplingParams(max_new_tokens=12))
    backend = VLLMBackend(FakeLLM(model, include_stop_token), {eos, stop}, FakeSamplingParams)
    finished = []
    gens = backend.generate(prompts, SamplingParams(max_new_tokens=12), progress=finished.append)
    assert [g.ids for g in gens] == [g.ids for g in reference]
    assert [g.truncated for g in gens] == [g.truncated for g in reference]
    assert gens[0].ids[-1] == stop and not gens[0].truncated
    assert sum(finished) == len(prompts)
    assert backend.generate([], SamplingParams()) == []


def test_sampling_requests_carry_the_row_seeds_and_settings(tiny_model):
    model, tok = tiny_model
    backend = _fake_backend(model, tok)
    prompts = _prompts(tok)[:3]
    hot = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=4)
    first = backend.generate(prompts, hot, seeds=[1, 2, 2**64 + 3])
    sent = [sp for _, sp in backend.engine.requests]
    assert [sp.seed for sp in sent] == [1, 2, 3]                   # reduced into vLLM's int64 range
    assert {(sp.temperature, sp.top_p, sp.top_k, sp.max_tokens) for sp in sent} == {(0.7, 0.9, 5, 4)}
    assert sent[0].stop_token_ids == sorted(backend.eos_token_ids)
    assert [g.ids for g in backend.generate(prompts, hot, seeds=[1, 2, 3])] == [g.ids for g in first]
    backend.generate(prompts, SamplingParams(top_k=0, max_new_tokens=2), seeds=[1, 2, 3])
    assert {sp.seed for _, sp in backend.engine.requests[-3:]} == {None}       # greedy: no seed
    assert {sp.top_k for _, sp in backend.engine.requests[-3:]} == {-1}        # vLLM's "off"


@pytest.mark.long
def test_episodes_and_masks_do_not_depend_on_the_backend(tiny_model):
    model, tok = tiny_model
    problems = [Problem(id=f"p{i}", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(3)]
    task = Task(name="t", problems=problems, format_prompt=lambda p: p.question, correction_instruction="Again.",
                verify=lambda text, p: float(p.answer in text), extract_answer=lambda text: text)
    builder = ConversationBuilder(tok, task.correction_instruction)
    params = SamplingParams(max_new_tokens=6)
    ours = sample_episodes(TransformersBackend(model, tok), builder, task, problems, attempts=3, params=params)
    theirs = sample_episodes(_fake_backend(model, tok), builder, task, problems, attempts=3, params=params)
    assert [e.tokens for e in ours] == [e.tokens for e in theirs]
    a, b = collate(ours, tok.pad_token_id), collate(theirs, tok.pad_token_id)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_weights_reach_the_engine_merged(tiny_model, tmp_path):
    model, tok = tiny_model
    policy = apply_lora(copy.deepcopy(model), r=4, alpha=8.0, dropout=0.0, target_modules=["all-linear"])
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)                        # a non-zero update
    merged = export_merged(policy, tok, tmp_path / "merged")
    from selfcorrect.models import load_model

    expected = load_model(str(merged), dtype="float32").state_dict()
    weights = dict(merged_weights(policy))
    assert weights.keys() <= expected.keys() and not any("lora" in n or "base_layer" in n for n in weights)
    assert any(not torch.equal(weights[n], model.state_dict()[n]) for n in weights)
    for name, tensor in weights.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    base_before = {n: t.clone() for n, t in policy.get_base_model().state_dict().items()}
    backend = _fake_backend(model, tok)
    backend.sync_weights(lambda: merged_weights(policy))
    for name, tensor in backend.engine.model.state_dict().items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    after = policy.get_base_model().state_dict()         # merging was out of place: the policy is untouched
    assert all(torch.equal(after[n], t) for n, t in base_before.items())


def test_synced_weights_are_cast_to_the_engine_dtype(tiny_model):
    model, tok = tiny_model                                # float32, like a trained policy
    from selfcorrect.rollout import end_of_turn_ids

    backend = VLLMBackend(FakeLLM(model), end_of_turn_ids(tok), FakeSamplingParams, weight_dtype=torch.bfloat16)
    backend.sync_weights(lambda: merged_weights(model))
    assert backend.engine.loaded_dtypes == {torch.bfloat16}
    assert backend.syncs == 1 and backend.engine.resets == 1


def _patch_engine(monkeypatch, created: list):
    def create(cls, model, eos_token_ids, **kwargs):
        from selfcorrect.models import load_model

        backend = cls(FakeLLM(load_model(model, dtype="float32")), eos_token_ids, FakeSamplingParams)
        created.append((backend, kwargs))
        return backend

    monkeypatch.setattr(VLLMBackend, "create", classmethod(create))


@pytest.mark.parametrize("lora_r", [0, 4])
@pytest.mark.long
def test_trainer_pushes_weights_into_the_engine_after_every_step(tiny_model_dir, tmp_path, parity_task,
                                                                  monkeypatch, lora_r):
    created: list = []
    _patch_engine(monkeypatch, created)
    config = TrainConfig(model=str(tiny_model_dir), task=parity_task, out=str(tmp_path / "run"), iterations=1,
                         stage1_steps=1, stage2_steps=1, problems_per_step=2, samples=2, max_new_tokens=4,
                         eval_limit=2, eval_max_new_tokens=3, autocast="none", report_to=["none"],
                         log_samples_every=0, lr=0.05, lora_r=lora_r, rollout_backend="vllm",
                         vllm_gpu_memory_utilization=0.25, vllm_max_model_len=512)
    trainer = Trainer.create(config)
    (backend, kwargs), = created
    assert kwargs["gpu_memory_utilization"] == 0.25 and kwargs["max_model_len"] == 512
    engine = backend.engine
    for step in range(2):
        trainer.train_step()
        assert engine.loads == step + 2 and engine.resets == engine.loads    # start + one per optimizer step
        served = engine.model.state_dict()
        for name, tensor in merged_weights(trainer.policy):
            assert torch.allclose(served[name], tensor, atol=1e-6), name
    assert engine.requests and len(trainer.last_episodes) == 4


@pytest.mark.long
def test_resumed_run_syncs_the_checkpoint_into_the_engine(tiny_model_dir, tmp_path, parity_task, monkeypatch):
    created: list = []
    _patch_engine(monkeypatch, created)
    config = TrainConfig(model=str(tiny_model_dir), task=parity_task, out=str(tmp_path / "run"), iterations=1,
                         stage1_steps=1, stage2_steps=1, problems_per_step=2, samples=2, max_new_tokens=4,
                         eval_limit=2, eval_max_new_tokens=2, autocast="none", report_to=["none"],
                         log_samples_every=0, lr=0.05, rollout_backend="vllm")
    Trainer.create(config).train()
    resumed = Trainer.resume(tmp_path / "run")
    served = created[-1][0].engine.model.state_dict()
    for name, tensor in resumed.policy.state_dict().items():
        assert torch.equal(served[name], tensor), name


def test_backend_errors_are_clear(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="rollout_backend must be one of transformers, vllm"):
        TrainConfig(rollout_backend="sglang")
    with pytest.raises(ConfigError, match=r"vllm_gpu_memory_utilization must be in \(0, 1\]"):
        TrainConfig(vllm_gpu_memory_utilization=1.5)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="not .gguf files"):
        engine_source(str(tmp_path / "m.gguf"))
    assert engine_source(str(tiny_model_dir)) == str(tiny_model_dir)


VLLM_PYTHON = os.environ.get("SELFCORRECT_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))


@pytest.mark.slow
@pytest.mark.skipif(not Path(VLLM_PYTHON).exists(), reason="no vLLM environment (make setup-vllm)")
def test_real_vllm_greedy_matches_the_transformers_backend_on_the_default_model(tmp_path):
    """Real vLLM (CPU build) vs the transformers backend: same greedy attempt-1 and attempt-2 tokens."""
    script = ROOT / "benchmarks" / "vllm_parity.py"
    result = subprocess.run([VLLM_PYTHON, str(script), "--problems", "16", "--out", str(tmp_path / "p.json")],
                            capture_output=True, text=True, cwd=ROOT, timeout=900,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    import json

    report = json.loads((tmp_path / "p.json").read_text())
    assert report["identical_attempts"] >= 0.9 * report["attempts"], report
    assert report["weight_sync_changes_outputs"] and report["weight_restore_restores_outputs"], report
    assert report["weight_sync_matches_transformers"], report
