"""Rollout throughput: the project's engine vs a naive engine, measured in the same run.

Both produce 2-attempt greedy episodes on the default model and the default
arithmetic task (the same problems):

* **naive** — one conversation at a time through ``model.generate``; attempt 2
  is rendered from the chat template as text and re-encoded from scratch;
* **selfcorrect** — :func:`selfcorrect.rollout.sample_episodes` with the
  :class:`~selfcorrect.rollout.TransformersBackend` (batched, left-padded,
  finished rows dropped, attempt-2 prompts extended by token ids).

The naive engine's rate does not depend on a batch size, so it is measured
once (on ``--naive-problems`` problems) and compared with the engine at each
``--batch-sizes`` value.  The ratio (episodes/s engine ÷ naive) is printed
last.  Target on the 2-core CPU machine: >= 4x.

    python benchmarks/rollout.py [--batch-sizes 32,64] [--max-new-tokens 128]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--naive-problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

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
        backend = TransformersBackend(model, tokenizer, batch_size=bs)
        problems = task.problems[:bs]
        start = time.perf_counter()
        episodes = sample_episodes(backend, builder, task, problems, attempts=2,
                                   params=SamplingParams(max_new_tokens=args.max_new_tokens))
        seconds = time.perf_counter() - start
        tokens = sum(len(a.ids) for ep in episodes for a in ep.attempts)
        rate = len(episodes) / seconds
        ratios.append((bs, rate / naive_eps))
        print(f"selfcorrect  : {len(episodes):3d} episodes in {seconds:6.1f} s  {rate:6.2f} episodes/s  "
              f"{tokens / seconds:7.1f} tokens/s  (batch {bs})")
    for bs, ratio in ratios:
        print(f"ratio (batch {bs}): {ratio:.2f}x the naive engine's episodes/s")


if __name__ == "__main__":
    main()
