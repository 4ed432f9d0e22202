"""Behaviour fingerprint of the trainer, for refactors that must not change a single bit.

Runs short training jobs on a tiny random Llama (every method, LoRA, and the 2-process
replicated / FSDP2 / DeepSpeed layouts on CPU) and prints, per job, a hash of its
``metrics.jsonl`` rows (timing fields left out) and a hash of its final weights (each
tensor's name, dtype, shape and bytes).  Run it before and after a refactor; the two
outputs must be identical::

    python scripts/refactor_guard.py --out /tmp/guard-before.json
    # ... refactor ...
    python scripts/refactor_guard.py --out /tmp/guard-after.json
    diff /tmp/guard-before.json /tmp/guard-after.json

About 5 minutes on 2 CPU cores.  ``--only score,star`` runs a subset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("time_generate_s", "time_train_s", "tokens_per_s")
TASK = '''
from selfcorrect.tasks.base import Problem, Task

def make_task(split: str = "train"):
    return Task(name="parity", problems=[Problem(id=f"{split}{i}", question=f"Say {i}") for i in range(12)],
                format_prompt=lambda p: p.question, correction_instruction="Try again.",
                verify=lambda text, p: float(len(text) % 2 == 0), extract_answer=lambda text: text or None)
'''
COMMON = ["--iterations", "2", "--stage1-steps", "2", "--stage2-steps", "1", "--problems-per-step", "4",
          "--samples", "2", "--micro-batch-problems", "1", "--seed", "3", "--max-new-tokens", "4",
          "--eval-limit", "2", "--eval-max-new-tokens", "2", "--report-to", "none", "--autocast", "none",
          "--lr", "1e-3", "--temperature", "0.7", "--logprob-chunk", "3", "--star-rounds", "2", "--sft-steps", "2",
          "--sft-batch-episodes", "4", "--sft-keep", "D+", "--log-samples-every", "1",
          # the toy task's splits share their questions: the run's held-out check would refuse it
          "--allow-train-test-overlap", "true"]
JOBS: dict[str, tuple[str | None, list[str]]] = {
    # name: (accelerate launch config or None for one process, extra flags)
    **{m: (None, ["--method", m]) for m in ("score", "no-shaping", "stage2-only", "single-turn", "star",
                                            "pair-sft", "star-stage2", "prompting")},
    "score-lora": (None, ["--lora-r", "4"]),
    "score-k3-rloo-off": (None, ["--kl-in", "loss-k3", "--baseline", "none", "--attempts", "3"]),
    "replicated-2proc": ("cpu", []),
    "fsdp-zero3-2proc": ("fsdp_zero3", []),
    "fsdp-zero2-2proc": ("fsdp_zero2", []),
    "deepspeed-zero3-2proc": ("deepspeed_zero3", []),
    "deepspeed-zero2-2proc": ("deepspeed_zero2", []),
}


def tiny_model(path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfcorrect.models import load_tokenizer

    tok = load_tokenizer("default")
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def launcher(name: str, tmp: Path) -> list[str]:
    import yaml

    config = yaml.safe_load((ROOT / "selfcorrect" / "configs" / "accelerate" / f"{name}.yaml").read_text())
    config.update(num_processes=2, use_cpu=True)
    config.pop("gpu_ids", None)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path),
            "--main_process_port", str(port), "-m", "selfcorrect.cli"]


def fingerprint(run: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    from selfcorrect.checkpoint import latest_checkpoint

    rows = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if (run / "metrics.jsonl").is_file() else [])
    clean = [{k: v for k, v in row.items() if k not in TIMING and not k.startswith("time_")} for row in rows]
    out = {"rows": str(len(clean)), "metrics": hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()}
    try:
        checkpoint = latest_checkpoint(run)
    except Exception:           # `prompting` trains nothing and saves nothing
        checkpoint = None
    if checkpoint is not None:
        weights = {}
        # the policy only: what else a checkpoint holds (the Stage I anchor) is resume state, not behaviour
        for file in sorted(f for f in checkpoint.glob("*.safetensors") if f.name != "anchor.safetensors"):
            weights.update({f"{file.name}:{k}": v for k, v in load_file(str(file)).items()})
        digest = hashlib.sha256()
        for key in sorted(weights):
            t = weights[key].contiguous()
            digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes())
        out["weights"] = digest.hexdigest()
    final = run / "eval" / "metrics.json"
    if final.is_file():
        # the numbers, not where they came from (split sources name this run's temporary paths)
        numbers = {k: v for k, v in json.loads(final.read_text()).items() if k not in ("split", "splits")}
        out["eval"] = hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of the fingerprints")
    parser.add_argument("--only", default="", help="comma-separated job names (default: all)")
    args = parser.parse_args()
    jobs = [j for j in JOBS if not args.only or j in args.only.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tiny_model(tmp / "model")
        (tmp / "task.py").write_text(TASK)
        for job in jobs:
            launch, extra = JOBS[job]
            command = launcher(launch, tmp) if launch else [sys.executable, "-m", "selfcorrect.cli"]
            run = tmp / job
            done = subprocess.run([*command, "train", "--model", str(tmp / "model"), "--task",
                                   f"{tmp / 'task.py'}:make_task", *COMMON, *extra, "--out", str(run)],
                                  capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                results[job] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"}
            else:
                results[job] = fingerprint(run)
            print(job, json.dumps(results[job]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
