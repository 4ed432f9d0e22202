"""Milliseconds per decode step at a fixed batch: our decode modes vs ``model.generate``, in one run.

The default model's architecture (SmolLM2-135M) with random weights -- nothing is downloaded --
decodes ``--batch`` rows of a ``--prompt-tokens`` prompt for exactly ``--steps`` tokens (no row
ends early: the end-of-turn id is one the sampler never draws), greedy.  A decode step's time is
(time for ``steps`` tokens - time for 1 token) / (steps - 1), so the prefill is left out.  Each
mode runs once to warm up (CUDA graphs are captured then) and is timed on a second run.

Measured: selfcorrect's ``dynamic``, ``static`` and (CUDA) ``graphs`` decode, and
``model.generate`` with its default (dynamic) cache and (CUDA) ``cache_implementation="static"``,
which transformers compiles.  On a GPU the target is <= 3 ms per step at batch 64.

    python benchmarks/decode.py [--device cuda] [--batch 64] [--steps 64] [--prompt-tokens 150]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--modes", default="", help="comma-separated subset of the modes (default: all that apply)")
    args = parser.parse_args()

    from gpu_run import build_model
    from transformers import AutoModelForCausalLM

    from selfcorrect.models import load_tokenizer
    from selfcorrect.rollout import SamplingParams, TransformersBackend

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model("default", Path(tmp) / "model")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tok = load_tokenizer("default")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 40000, (args.prompt_tokens,), generator=g).tolist() for _ in range(args.batch)]
    never = {model.config.vocab_size + 7}                       # an end-of-turn id no row samples

    def ours(decode: str):
        backend = TransformersBackend(model, tok, batch_size=args.batch, eos_token_ids=never, decode=decode)
        return lambda n: backend.generate(prompts, SamplingParams(max_new_tokens=n))

    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)

    def hf(**kwargs):
        return lambda n: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                        do_sample=False, pad_token_id=tok.pad_token_id, **kwargs)

    modes = {"selfcorrect dynamic": ours("dynamic"), "selfcorrect static": ours("static"),
             "generate (dynamic cache)": hf()}
    if device.type == "cuda":
        modes["selfcorrect graphs"] = ours("graphs")
        modes["generate static (compiled)"] = hf(cache_implementation="static")
    if args.modes:
        wanted = {m.strip() for m in args.modes.split(",")}
        modes = {k: v for k, v in modes.items() if any(w in k for w in wanted)}
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, {args.dtype}, batch "
          f"{args.batch}, prompt {args.prompt_tokens} tokens, {args.steps} decode steps, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params (random)")
    results = {}
    with torch.inference_mode():
        for name, run in modes.items():
            try:
                run(args.steps)                                     # warm-up: allocation, compilation, capture
                one = _timed(lambda run=run: run(1), device)
                full = _timed(lambda run=run: run(args.steps), device)
            except Exception as error:                              # report and go on with the other modes
                print(f"{name:<28}: failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
                continue
            results[name] = (full - one) / (args.steps - 1) * 1e3
            print(f"{name:<28}: {results[name]:7.2f} ms per decode step (prefill + 1 token {one * 1e3:.1f} ms)")
    base = results.get("generate (dynamic cache)")
    for name, ms in results.items():
        if base and name.startswith("selfcorrect"):
            print(f"ratio {name}: {base / ms:.2f}x faster per step than generate (dynamic cache)"
                  + ("; target <= 3 ms at batch 64" if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
