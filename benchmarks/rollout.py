"""Rollout throughput: the project's engine vs batched ``model.generate`` and a naive engine, in one run.

All produce 2-attempt greedy episodes on the default model and the default
arithmetic task (the same problems):

* **naive** -- one conversation at a time through ``model.generate``; attempt 2
  is rendered from the chat template as text and re-encoded from scratch;
* **batched generate** -- ``model.generate`` on the same batch of prompts
  (left-padded), attempt 2 built by token ids like ours (prompt + attempt 1 +
  turn suffix) and encoded again from scratch; every row runs until the
  batch's longest row ends.  With ``--hf-static`` (for a GPU) also
  ``cache_implementation="static"``, whose decode step transformers compiles (its fast path);
* **selfcorrect** -- :func:`selfcorrect.rollout.sample_episodes` with the
  :class:`~selfcorrect.rollout.TransformersBackend` (batched, left-padded,
  finished rows dropped, the shared prefix encoded once, attempt 2 starting
  from attempt 1's KV cache), with each ``--decode`` mode.

Ratios (episodes/s ÷ batched generate, and ÷ naive) are printed last.
Target on the 2-core CPU machine: >= 2.5x batched generate.

    python benchmarks/rollout.py [--batch-sizes 32,64] [--max-new-tokens 128] [--decode dynamic,static]
"""

from __future__ import annotations

import argparse
import time

import torch

from selfcorrect.models import load_model_and_tokenizer
from selfcorrect.rollout import ConversationBuilder, SamplingParams, TransformersBackend, sample_episodes
from selfcorrect.tasks import load_task


def naive_episodes(model, tokenizer, task, problems, max_new_tokens: int) -> tuple[int, int]:
    """Returns (episodes, generated tokens)."""
    eos = tokenizer.eos_token_id
    tokens = 0
    for problem in problems:
        messages = [{"role": "user", "content": task.first_prompt(problem)}]
        for attempt in range(2):
            if attempt:
                messages.append({"role": "user", "content": task.correction_instruction})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
            new = out[0, ids["input_ids"].shape[1]:]
            tokens += int(new.numel())
            messages.append({"role": "assistant", "content": tokenizer.decode(new, skip_special_tokens=True)})
    return len(problems), tokens


def batched_generate_episodes(model, tokenizer, builder, task, problems, max_new_tokens: int,
                              **generate_kwargs) -> tuple[int, int]:
    """Returns (episodes, generated tokens): ``model.generate`` on the whole batch, attempt by attempt."""
    eos = tokenizer.eos_token_id
    contexts = [builder.first_prompt(task.first_prompt(p)) for p in problems]
    tokens = 0
    for attempt in range(2):
        batch = tokenizer.pad({"input_ids": contexts}, padding_side="left", return_tensors="pt")
        width = batch["input_ids"].shape[1]
        device = next(model.parameters()).device
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                             **generate_kwargs)[:, width:].tolist()
        answers = [row[: row.index(eos) + 1] if eos in row else row for row in out]
        tokens += sum(len(a) for a in answers)
        if attempt == 0:
            contexts = [c + a + builder.turn_suffix(a) for c, a in zip(contexts, answers)]
    return len(problems), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--naive-problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--decode", default="dynamic,static", help="selfcorrect decode modes to measure")
    parser.add_argument("--hf-static", action="store_true",
                        help="also model.generate with a static cache + torch.compile (CUDA)")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    decodes = [d.strip() for d in args.decode.split(",") if d.strip()]

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    task = load_task("arithmetic", split="test")
    print(f"model={args.model} dtype={next(model.parameters()).dtype} threads={torch.get_num_threads()} "
          f"max_new_tokens={args.max_new_tokens}")

    start = time.perf_counter()
    n, tokens = naive_episodes(model, tokenizer, task, task.problems[: args.naive_problems], args.max_new_tokens)
    naive_s = time.perf_counter() - start
    naive_eps = n / naive_s
    print(f"naive        : {n:3d} episodes in {naive_s:6.1f} s  {naive_eps:6.2f} episodes/s  "
          f"{tokens / naive_s:7.1f} tokens/s")

    builder = ConversationBuilder(tokenizer, task.correction_instruction)
    ratios = []
    for bs in batch_sizes:
        problems = task.problems[:bs]
        baselines = [("batched generate", {})]
        if args.hf_static:   # transformers compiles the decode step itself for a static cache on CUDA
            baselines.append(("generate static cache", {"cache_implementation": "static"}))
        rates = {}
        for name, kwargs in baselines:
            start = time.perf_counter()
            n, tokens = batched_generate_episodes(model, tokenizer, builder, task, problems, args.max_new_tokens,
                                                  **kwargs)
            seconds = time.perf_counter() - start
            rates[name] = n / seconds
            print(f"{name:<24}: {n:3d} episodes in {seconds:6.1f} s  {rates[name]:6.2f} episodes/s  "
                  f"{tokens / seconds:7.1f} tokens/s  (batch {bs})")
        for decode in decodes:
            backend = TransformersBackend(model, tokenizer, batch_size=bs, decode=decode)
            start = time.perf_counter()
            episodes = sample_episodes(backend, builder, task, problems, attempts=2,
                                       params=SamplingParams(max_new_tokens=args.max_new_tokens))
            seconds = time.perf_counter() - start
            tokens = sum(len(a.ids) for ep in episodes for a in ep.attempts)
            rate = len(episodes) / seconds
            print(f"{'selfcorrect ' + decode:<24}: {len(episodes):3d} episodes in {seconds:6.1f} s  "
                  f"{rate:6.2f} episodes/s  {tokens / seconds:7.1f} tokens/s  (batch {bs})")
            for name, base in rates.items():
                ratios.append(f"ratio (batch {bs}, {decode}): {rate / base:.2f}x {name}'s episodes/s"
                              + ("  (target >= 2.5)" if name == "batched generate" else ""))
            ratios.append(f"ratio (batch {bs}, {decode}): {rate / naive_eps:.2f}x the naive engine's episodes/s")
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
