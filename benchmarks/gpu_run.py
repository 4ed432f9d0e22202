"""A short SCoRe run on one GPU with a from-scratch model: step time, tokens/s, peak GPU memory.

No weights are downloaded: the model is the default model's *architecture*
(SmolLM2-135M: 30 layers, hidden 576, 49k vocabulary) with random weights, or
a 4-layer toy (``--arch tiny``), next to the default tokenizer.  A random
model rarely emits an end-of-turn token, so nearly every attempt runs to
``--max-new-tokens``: the step times are a worst case for generation length.
Rewards are ~0 (nothing is learnt in a few steps); this measures the machinery.

    python benchmarks/gpu_run.py [--arch default|tiny] [--steps 4] [--problems 16] [--samples 4]
                                 [--max-new-tokens 128] [--device cuda] [--lora-r 0]
    torchrun --nproc_per_node N benchmarks/gpu_run.py --sharding zero3 ...     # FSDP2 sharded
    torchrun --nproc_per_node N benchmarks/gpu_run.py --sharding zero3 --sharding-engine deepspeed ...

Prints one line per step (phase, generate/train seconds, generated tokens/s,
peak memory) and a summary; the first step includes CUDA warm-up and is
left out of the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build_model(arch: str, out: Path) -> Path:
    """Save a randomly initialised causal LM (+ the default tokenizer) to ``out``; return it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfcorrect.models import default_model_dir, load_tokenizer

    tok = load_tokenizer("default")
    config = AutoConfig.from_pretrained(default_model_dir())
    if arch == "tiny":
        config.update(dict(num_hidden_layers=4, hidden_size=256, intermediate_size=704, num_attention_heads=4,
                           num_key_value_heads=2))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["default", "tiny"], default="default")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (half Stage I, half Stage II)")
    parser.add_argument("--problems", type=int, default=16, help="problems per step")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--micro-batch-problems", type=int, default=16)
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0 = full fine-tuning)")
    parser.add_argument("--sharding", choices=["none", "zero2", "zero3"], default="none",
                        help="ZeRO layout (launch with torchrun, e.g. --nproc_per_node 1)")
    parser.add_argument("--sharding-engine", choices=["fsdp", "deepspeed"], default="fsdp")
    parser.add_argument("--decode", choices=["dynamic", "static", "graphs"], default="dynamic",
                        help="the transformers backend's decode cache (graphs: CUDA graphs, opt-in)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="also write the per-step rows here")
    args = parser.parse_args()

    from selfcorrect.trainer import TrainConfig, Trainer

    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args.arch, Path(tmp) / "model")
        first, second = args.steps - args.steps // 2, args.steps // 2
        config = TrainConfig(model=str(model_dir), task="arithmetic", out=str(Path(tmp) / "run"),
                             device=args.device, iterations=1, stage1_steps=first, stage2_steps=second,
                             problems_per_step=args.problems, samples=args.samples, temperature=1.0,
                             max_new_tokens=args.max_new_tokens, micro_batch_problems=args.micro_batch_problems,
                             generation_batch_size=args.problems * args.samples, lora_r=args.lora_r,
                             decode=args.decode,
                             sharding=args.sharding, sharding_engine=args.sharding_engine,
                             eval_every=0, eval_limit=1, save_every=0, report_to=["none"], log_samples_every=0)
        loaded = time.perf_counter()
        trainer = Trainer.create(config)
        setup_peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
        params = sum(getattr(p, "ds_numel", p.numel()) for p in trainer.policy.parameters())  # (ZeRO-3: whole)
        say = print if trainer.dist.main else (lambda *a, **k: None)
        say(f"device {torch.cuda.get_device_name() if cuda else args.device}; "
            f"sharding {args.sharding} ({args.sharding_engine if args.sharding != 'none' else '-'}); "
              f"model {args.arch} "
              f"({params / 1e6:.1f}M params, random init); {args.problems} problems x {args.samples} samples x "
              f"2 attempts, <= {args.max_new_tokens} new tokens; setup {time.perf_counter() - loaded:.1f} s, "
              f"setup peak {setup_peak:.2f} GB",
              flush=True)
        rows = []
        for _ in range(args.steps):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            row = trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            row["step_s"] = time.perf_counter() - started
            row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
            rows.append(row)
            say(f"step {trainer.step} stage {row['stage']}: {row['step_s']:.2f} s "
                  f"(generate {row['time_generate_s']:.2f} s, train {row['time_train_s']:.2f} s), "
                  f"{row['generated_tokens']} tokens, {row['generated_tokens'] / row['time_generate_s']:.0f} "
                  f"generated tok/s, loss {row['loss']:.4f}, peak {row['peak_gb']:.2f} GB", flush=True)
        timed = rows[1:] or rows
        mean = lambda key: statistics.fmean(r[key] for r in timed)          # noqa: E731
        gen_rate = sum(r["generated_tokens"] for r in timed) / sum(r["time_generate_s"] for r in timed)
        say(f"summary (steps 2..{len(rows)}, decode {args.decode}): step {mean('step_s'):.2f} s, generate "
            f"{mean('time_generate_s'):.2f} s ({mean('time_generate_s') / mean('step_s'):.0%} of the step; "
            f"target < 50%), train {mean('time_train_s'):.2f} s, {gen_rate:.0f} generated tok/s, "
            f"{mean('tokens_per_s'):.0f} tok/s over the step, peak {max(r['peak_gb'] for r in rows):.2f} GB")
        from selfcorrect.training.clock import PHASES

        say("by phase (s/step): " + ", ".join(f"{p} {mean(f'time_{p}_s'):.3f}" for p in PHASES))
        if args.json and trainer.dist.main:
            Path(args.json).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
