"""CUDA checks (``pytest -m gpu``; skipped without a GPU): what the CPU suite proves, again on a GPU.

Each test repeats a CPU guarantee where CUDA kernels, bf16 autocast or the
CUDA RNG could break it: greedy decoding equals ``model.generate``, per-row
seeds make sampling batch-invariant, chunked log-probs equal full-logit
log-probs (values and gradients), LoRA's reference equals the base model, a
bf16 SCoRe run trains and resumes.  ``scripts/gpu_check.sh`` runs them.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from selfcorrect.logprobs import full_logits_logprobs, token_logprobs
from selfcorrect.rollout import SamplingParams, TransformersBackend
from selfcorrect.trainer import TrainConfig, Trainer

DEVICE = os.environ.get("SELFCORRECT_TEST_DEVICE", "cuda")
"""Where these tests run; ``SELFCORRECT_TEST_DEVICE=cpu`` checks their logic on a machine without a GPU."""

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture()
def cuda_model(tiny_model):
    model, tok = tiny_model
    return copy.deepcopy(model).to(DEVICE), tok


def _ids(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_greedy_backend_on_cuda_matches_hf_generate(cuda_model):
    model, tok = cuda_model
    prefix = "You are a careful assistant. Solve the problem below and answer. "
    prompts = _ids(tok, [prefix + "2+2", prefix + "what is 13 + 29 exactly, and why", prefix + "7", "hi"])
    eos = tok.eos_token_id
    gens = TransformersBackend(model, tok, batch_size=8).generate(prompts, SamplingParams(max_new_tokens=10))
    for prompt, gen in zip(prompts, gens):
        ref = model.generate(torch.tensor([prompt], device=DEVICE), max_new_tokens=10, do_sample=False,
                             pad_token_id=eos, eos_token_id=eos)[0, len(prompt):].tolist()
        cut = ref.index(eos) + 1 if eos in ref else len(ref)
        assert gen.ids == ref[:cut]


def test_per_row_seeds_on_cuda_do_not_depend_on_batching(cuda_model):
    model, tok = cuda_model
    prompts = _ids(tok, ["Say one word", "Say two words please", "Count to three"])
    hot = SamplingParams(temperature=1.0, max_new_tokens=8)
    seeds = [11, 22, 33]
    together = TransformersBackend(model, tok, batch_size=8).generate(prompts, hot, seeds=seeds)
    alone = [TransformersBackend(model, tok, batch_size=1).generate([p], hot, seeds=[s])[0]
             for p, s in zip(prompts, seeds)]
    assert [g.ids for g in together] == [g.ids for g in alone]
    again = TransformersBackend(model, tok).generate(prompts, hot, seeds=seeds)
    assert [g.ids for g in together] == [g.ids for g in again]


DECODES = ["static", "graphs"] if DEVICE == "cuda" else ["static"]   # graphs: CUDA only


def _lively(tok):
    """:func:`conftest.lively_llama` on DEVICE (float32)."""
    from conftest import lively_llama

    return lively_llama(tok).to(DEVICE)


@pytest.mark.parametrize("decode", DECODES)
def test_static_and_graph_decode_on_cuda_match_hf_generate(tiny_model, decode):
    """The preallocated-cache and CUDA-graph decode paths: same greedy tokens as ``model.generate``,
    rows ending at different steps (bucket changes), on the GPU."""
    _, tok = tiny_model
    model = _lively(tok)
    prompts = _ids(tok, ["hello", "a much longer prompt with many more tokens in it", "two words", "seven",
                         "count to ten", "the end"])
    refs = [model.generate(torch.tensor([p], device=DEVICE), max_new_tokens=12, do_sample=False,
                           pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)[0, len(p):].tolist()
            for p in prompts]
    stops = {tok.eos_token_id} | {ref[n - 1] for ref, n in zip(refs, [2, 5, 9, 3, 12, 7]) if len(ref) >= n}
    backend = TransformersBackend(model, tok, batch_size=6, eos_token_ids=stops, decode=decode)
    for _ in range(2):                                      # the second call replays captured graphs
        gens = backend.generate(prompts, SamplingParams(max_new_tokens=12))
        for prompt, gen in zip(prompts, gens):
            ref = model.generate(torch.tensor([prompt], device=DEVICE), max_new_tokens=12, do_sample=False,
                                 pad_token_id=tok.eos_token_id, eos_token_id=sorted(stops))[0, len(prompt):].tolist()
            cut = next((i + 1 for i, t in enumerate(ref) if t in stops), len(ref))
            assert gen.ids == ref[:cut]
    seeds = [3, 4, 5, 6, 7, 8]
    hot = SamplingParams(temperature=1.0, max_new_tokens=10)
    dynamic = TransformersBackend(model, tok, batch_size=6, eos_token_ids=stops).generate(prompts, hot, seeds=seeds)
    alone = [TransformersBackend(model, tok, batch_size=1, eos_token_ids=stops, decode=decode)
             .generate([p], hot, seeds=[s])[0] for p, s in zip(prompts, seeds)]
    assert ([g.ids for g in backend.generate(prompts, hot, seeds=seeds)] == [g.ids for g in dynamic] ==
        [g.ids for g in alone])


def test_shared_prefix_scoring_and_attempt_cache_on_cuda(tiny_model):
    """Shared-prefix scoring equals full scoring (values, gradients) and attempt 2 from attempt 1's
    cache samples what a fresh encoding samples, on the GPU (float32)."""
    from selfcorrect.logprobs import shared_prefixes
    from selfcorrect.rollout import ConversationBuilder, sample_episodes
    from selfcorrect.tasks.base import Problem, Task

    _, tok = tiny_model
    model = _lively(tok).train()
    g = torch.Generator().manual_seed(1)
    system = torch.randint(0, 500, (12,), generator=g).tolist()
    rows = [system + [p] * 9 + torch.randint(0, 500, (3 + s,), generator=g).tolist() for p in range(3) for s in range(3)]
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        labels[i, 21:len(row)] = True
    ids, mask, labels = ids.to(DEVICE), mask.to(DEVICE), labels.to(DEVICE)
    assert any(shared_prefixes(ids, labels)[1])
    out = []
    for shared in (False, True):
        model.zero_grad(set_to_none=True)
        lp = token_logprobs(model, ids, mask, labels, shared_prefix=shared)
        lp.sum().backward()
        out.append((lp.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5)
    for a, b in zip(out[0][1], out[1][1]):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max() + 1e-7
    model.eval()
    problems = [Problem(id=f"p{i}", question=f"Say {i} words " * (i + 1), answer="x") for i in range(3)]
    task = Task(name="toy", problems=problems, format_prompt=lambda p: p.question, correction_instruction="Again.",
                verify=lambda text, p: 0.0, extract_answer=lambda text: text or None)
    builder = ConversationBuilder(tok, task.correction_instruction)
    fresh = TransformersBackend(model, tok, batch_size=8)
    fresh.state_budget_bytes = 0
    greedy = SamplingParams(max_new_tokens=6)
    a = sample_episodes(fresh, builder, task, problems, samples=2, attempts=3, params=greedy)
    b = sample_episodes(TransformersBackend(model, tok, batch_size=8), builder, task, problems, samples=2,
                        attempts=3, params=greedy)
    assert [e.tokens for e in a] == [e.tokens for e in b]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_on_cuda_equal_full_logits(cuda_model, dtype):
    model, tok = cuda_model
    model = model.to(dtype)
    torch.manual_seed(0)
    input_ids = torch.randint(0, len(tok), (3, 24), device=DEVICE)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :5] = 0                                          # a left-padded row
    label_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    label_mask[:, 10:20] = True
    label_mask[0, :5] = False

    def grads(fn):
        model.zero_grad(set_to_none=True)
        lp = fn(model, input_ids, attention_mask, label_mask)
        (lp * label_mask).sum().backward()
        return lp.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    chunked, g_chunked = grads(lambda *a: token_logprobs(*a, chunk_size=7))
    full, g_full = grads(full_logits_logprobs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(chunked[label_mask], full[label_mask], atol=tol, rtol=tol)
    assert len(g_chunked) == len(g_full)
    for a, b in zip(g_chunked, g_full):
        assert torch.allclose(a.float(), b.float(), atol=tol * 10, rtol=tol * 10)


def _config(model_dir, out, task, **overrides) -> TrainConfig:
    base = dict(model=str(model_dir), task=task, out=str(out), device=DEVICE, dtype="float32",
                autocast="bf16", iterations=2, stage1_steps=2, stage2_steps=1, problems_per_step=2, samples=2,
                max_new_tokens=6, eval_limit=2, eval_max_new_tokens=3, micro_batch_problems=1,
                report_to=["none"], log_samples_every=0, lr=1e-3)
    base.update(overrides)
    return TrainConfig(**base)


def test_bf16_score_run_on_cuda_trains_and_resumes(tiny_model_dir, tmp_path, parity_task, interrupt_training):
    """6 steps straight vs 4 + Ctrl-C + resume on CUDA: (near-)same weights."""
    from safetensors.torch import load_file

    straight = Trainer.create(_config(tiny_model_dir, tmp_path / "a", parity_task))
    assert next(straight.policy.parameters()).device.type == torch.device(DEVICE).type
    straight.train()
    interrupted = Trainer.create(_config(tiny_model_dir, tmp_path / "b", parity_task))
    interrupt_training(interrupted, 4)
    Trainer.resume(tmp_path / "b").train()

    a = load_file(str(tmp_path / "a" / "checkpoint-6" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint-6" / "model.safetensors"))
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], initial[k]) for k in a)            # it trained
    # CUDA kernels may sum in another order between runs (embedding backward uses atomics): allow float noise.
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_lora_reference_on_cuda_is_the_base_model(tiny_model_dir, tmp_path, parity_task):
    from selfcorrect.lora import base_model_context
    from selfcorrect.models import load_model
    from selfcorrect.rollout import collate

    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "run", parity_task, lora_r=4, lora_alpha=8.0,
                                     lr=0.05, iterations=1, stage1_steps=1, stage2_steps=1))
    trainer.train_step()
    trainer.train_step()
    batch = {k: v.to(DEVICE) for k, v in collate(trainer.last_episodes, trainer.tokenizer.pad_token_id).items()}
    mask = batch["attempt_mask"].any(1)
    base = load_model(str(tiny_model_dir), dtype="float32", device=DEVICE)
    trainer.policy.eval()
    with torch.no_grad():
        with base_model_context(trainer.policy):
            disabled = token_logprobs(trainer.policy, batch["input_ids"], batch["attention_mask"], mask)
        expected = token_logprobs(base, batch["input_ids"], batch["attention_mask"], mask)
        adapted = token_logprobs(trainer.policy, batch["input_ids"], batch["attention_mask"], mask)
    assert torch.allclose(disabled, expected, atol=1e-5)
    assert not torch.allclose(adapted, disabled, atol=1e-4)             # the adapter learnt something
