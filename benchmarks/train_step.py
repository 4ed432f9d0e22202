"""One SCoRe RL step on the default model: time over a bare floor, memory, and TRL -- with where the time goes.

(a) **Time.**  ``selfcorrect``'s step (:meth:`Trainer.train_step`: rollout of
8 problems x 4 samples x 2 attempts, reference and policy scoring, Stage II
loss, Adam step) against a *floor* measured in the same run on the same
episodes: bare batched ``model.generate`` for both attempts (same prompts,
same token limit) + one bare no-grad forward + one bare
forward/backward/optimizer step (plain causal-LM loss).  Both are broken down
by phase (generate / reference score / policy score / backward / optimizer /
weight sync; ``selfcorrect.training.clock``).  Target <= 0.45x.  Also the
step's peak RSS (target: within 1.1x of the 4.4 GB measured before issue 16).

(b) **Memory.**  The scoring + loss + backward of the step's 32 episodes in one
micro-batch, each variant in a fresh process, peak RSS above the process's
resident size after loading: selfcorrect's default (output layer only at
attempt positions in checkpointed chunks, :func:`selfcorrect.logprobs.token_logprobs`,
plus checkpointed decoder layers) vs a naive implementation (full ``[B, T, V]``
logits, :func:`selfcorrect.logprobs.full_logits_logprobs`, no checkpointing);
also full logits *with* checkpointed layers, to isolate the logits' share.
Target <= 0.5x.

(c) **Against TRL.**  Single-turn RL (``method: single-turn``: 8 prompts
x 4 samples, <= 64 new tokens, KL on, bf16 autocast) vs Hugging Face TRL's
``RLOOTrainer`` on the same model, prompts and reward (8 prompts x 4
generations, ``max_completion_length`` 64, ``beta`` 0.01, ``bf16``); each in
a fresh process, the mean of steps after a warm-up step, generated
(completion) tokens per second, and both broken down by phase (TRL's methods
timed from outside: ``_generate`` + ``_calculate_rewards`` = generate, its
log-prob passes before the loss = reference score, ``_compute_loss`` = policy
score, ``accelerator.backward``, and the optimizer callbacks).  Target >= 4x.
Needs ``pip install -e .[bench]``; skipped otherwise.

    python benchmarks/train_step.py [--max-new-tokens 64] [--steps 2] [--skip-trl]

Ratios are printed last.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch


def _autocast(precision: str):
    """bf16 autocast (the benchmark's default, as in training) or none (fp32: CPUs without native bf16)."""
    import contextlib

    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _trainer(max_new_tokens: int, out: str, precision: str, gradient_checkpointing: bool = True):
    from selfcorrect.trainer import TrainConfig, Trainer

    config = TrainConfig(model="default", task="arithmetic", out=out, overwrite=True, report_to=["none"],
                         autocast="bf16" if precision == "bf16" else "none",
                         iterations=1, stage1_steps=0, stage2_steps=2, problems_per_step=8, samples=4,
                         temperature=0.7, max_new_tokens=max_new_tokens, micro_batch_problems=8,
                         gradient_checkpointing=gradient_checkpointing)
    return Trainer.create(config)


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> float:
    """Reset the peak-RSS mark (VmHWM) to the current RSS and return it.

    ``getrusage``'s ``ru_maxrss`` would not do: Linux carries it over from the
    parent into spawned children, so every child would report the parent's peak.
    """
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mb("VmRSS")


def _rss_mb() -> float:
    return _status_mb("VmHWM")


def _memory_worker(mode: str, checkpointing: bool, max_new_tokens: int, out: str, precision: str, queue) -> None:
    """Peak RSS of scoring + loss + backward for one batch, in a fresh process."""
    from selfcorrect.algorithms.score import stage_two_loss
    from selfcorrect.logprobs import full_logits_logprobs, token_logprobs
    from selfcorrect.rollout import collate, sample_episodes

    torch.manual_seed(0)
    trainer = _trainer(max_new_tokens, out, precision, checkpointing)
    c = trainer.config
    problems = trainer.task.problems[: c.problems_per_step]
    with _autocast(precision):
        episodes = sample_episodes(trainer.backend, trainer.builder, trainer.task, problems, samples=c.samples,
                                   attempts=2, params=c.sampling_params())
    batch = collate(episodes, trainer.tokenizer.pad_token_id)
    label_mask = batch["attempt_mask"].any(1)
    rewards = torch.tensor([[a.reward for a in ep.attempts] for ep in episodes])
    groups = torch.tensor([i // c.samples for i in range(len(episodes))])
    score = token_logprobs if mode == "selfcorrect" else full_logits_logprobs
    base = _reset_peak()
    with _autocast(precision):
        with torch.no_grad():
            ref = score(trainer.reference, batch["input_ids"], batch["attention_mask"], label_mask)
        logp = score(trainer.policy, batch["input_ids"], batch["attention_mask"], label_mask)
    out_ = stage_two_loss(logp, ref, batch["attempt_mask"], rewards, groups, alpha=10.0, beta1=0.01)
    out_.loss.backward()
    queue.put({"mode": mode, "peak_mb": _rss_mb() - base, "tokens": int(batch["attention_mask"].sum())})


def _measure_memory(mode: str, checkpointing: bool, max_new_tokens: int, out: str, precision: str) -> dict:
    return _in_process(_memory_worker, mode, checkpointing, max_new_tokens, out, precision)


def _floor(trainer, episodes, max_new_tokens: int, precision: str) -> dict[str, float]:
    """Bare generate (both attempts, same prompts) + bare no-grad forward + bare fwd/bwd/step."""
    from selfcorrect.rollout import collate

    model, tok = trainer.policy, trainer.tokenizer
    times = {}
    start = time.perf_counter()
    for k in range(2):
        contexts = [ep.tokens[: ep.attempts[k].start] for ep in episodes]
        batch = tok.pad({"input_ids": contexts}, padding_side="left", return_tensors="pt")
        with torch.no_grad(), _autocast(precision):
            model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=True,
                           temperature=0.7, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    times["generate"] = time.perf_counter() - start
    batch = collate(episodes, tok.pad_token_id)
    start = time.perf_counter()
    with torch.no_grad(), _autocast(precision):
        trainer.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    times["forward"] = time.perf_counter() - start
    labels = batch["input_ids"].masked_fill(~batch["attempt_mask"].any(1), -100)
    checkpointed = getattr(model, "is_activation_checkpointing", None)
    if checkpointed is None:                                # transformers < 5.20
        checkpointed = getattr(model, "is_gradient_checkpointing", False)
    if checkpointed:                          # the floor is *bare*: no activation recomputation
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    start = time.perf_counter()
    with _autocast(precision):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    times["train_forward"] = time.perf_counter() - start
    start = time.perf_counter()
    loss.backward()
    times["backward"] = time.perf_counter() - start
    start = time.perf_counter()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    times["optimizer"] = time.perf_counter() - start
    return times


def _ours_single_turn_worker(steps: int, out: str, precision: str, queue) -> None:
    from selfcorrect.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    config = TrainConfig(model="default", task="arithmetic", out=out, overwrite=True, report_to=["none"],
                         method="single-turn", iterations=1, stage1_steps=0, stage2_steps=steps + 1,
                         problems_per_step=8, samples=4, temperature=1.0, max_new_tokens=64,
                         micro_batch_problems=8, beta1=0.01, autocast="bf16" if precision == "bf16" else "none")
    trainer = Trainer.create(config)
    _reset_peak()
    trainer.train_step()                                    # warm-up
    seconds, tokens = 0.0, 0
    phases: dict[str, float] = {}
    for _ in range(steps):
        start = time.perf_counter()
        row = trainer.train_step()
        seconds += time.perf_counter() - start
        tokens += row["generated_tokens"]
        for key, value in _phases(row).items():
            phases[key] = phases.get(key, 0.0) + value / steps
    queue.put({"seconds_per_step": seconds / steps, "tokens_per_s": tokens / seconds, "peak_rss_mb": _rss_mb(),
               "phases": phases})


def _phases(row: dict) -> dict[str, float]:
    """A metrics row's per-phase seconds (``time_<phase>_s``), by phase."""
    from selfcorrect.training.clock import PHASES

    return {phase: row[f"time_{phase}_s"] for phase in PHASES}


def _phase_line(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items())


def _trl_worker(steps: int, out: str, precision: str, queue) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from selfcorrect.models import load_model, load_tokenizer
    from selfcorrect.tasks import load_task

    torch.manual_seed(0)
    task = load_task("arithmetic", split="train")
    problems = task.problems[: 8 * (steps + 1)]
    by_prompt = {task.first_prompt(p): p for p in problems}
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in by_prompt])
    counted = {"tokens": 0}

    def reward(prompts, completions, completion_ids, **kwargs):
        counted["tokens"] += sum(len(ids) for ids in completion_ids)
        return [task.reward(c[-1]["content"], by_prompt[p[-1]["content"]]) for p, c in zip(prompts, completions)]

    marks: list[tuple[float, int, dict[str, float]]] = []
    spent = {"generate": 0.0, "reference_score": 0.0, "policy_score": 0.0, "backward": 0.0, "optimizer": 0.0}
    optimizer_started = [0.0]

    class Clock(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            optimizer_started[0] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            spent["optimizer"] += time.perf_counter() - optimizer_started[0]

        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), counted["tokens"], dict(spent)))

    args = RLOOConfig(output_dir=out, per_device_train_batch_size=32, num_generations=4, max_completion_length=64,
                      beta=0.01, bf16=precision == "bf16", use_cpu=True, max_steps=steps + 1, logging_steps=1, report_to=[],
                      save_strategy="no", temperature=1.0, learning_rate=1e-5, shuffle_dataset=False,
                      dataloader_num_workers=0)
    trainer = RLOOTrainer(model=load_model("default", dtype="float32"), reward_funcs=reward, args=args,
                          train_dataset=dataset, processing_class=load_tokenizer("default"),
                          callbacks=[Clock()])
    _time_trl_phases(trainer, spent)
    _reset_peak()
    trainer.train()
    (t0, n0, p0), (t1, n1, p1) = marks[0], marks[-1]
    steps_timed = len(marks) - 1
    queue.put({"seconds_per_step": (t1 - t0) / steps_timed, "tokens_per_s": (n1 - n0) / (t1 - t0),
               "peak_rss_mb": _rss_mb(), "phases": {k: (p1[k] - p0[k]) / steps_timed for k in p1}})


def _time_trl_phases(trainer, spent: dict[str, float]) -> None:
    """Charge TRL's own methods to our phases, timed from outside (no change to what they do)."""
    inside_loss = [False]

    def timed(name: str, phase_of):
        original = getattr(trainer, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phase = phase_of()
                if phase:
                    spent[phase] += time.perf_counter() - start
        setattr(trainer, name, wrapper)

    timed("_generate", lambda: "generate")
    timed("_calculate_rewards", lambda: "generate")                 # ours counts verification in generate
    timed("_get_per_token_logps_and_entropies", lambda: None if inside_loss[0] else "reference_score")
    original_loss = trainer._compute_loss

    def compute_loss(*args, **kwargs):
        inside_loss[0] = True
        start = time.perf_counter()
        try:
            return original_loss(*args, **kwargs)
        finally:
            inside_loss[0] = False
            spent["policy_score"] += time.perf_counter() - start
    trainer._compute_loss = compute_loss
    original_backward = trainer.accelerator.backward

    def backward(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original_backward(*args, **kwargs)
        finally:
            spent["backward"] += time.perf_counter() - start
    trainer.accelerator.backward = backward


def _in_process(target, *args) -> dict:
    """Run ``target(*args, queue)`` in a fresh process and return what it put on the queue.

    A child that dies (e.g. killed for memory) is reported instead of waited for forever.
    """
    import queue as queues

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queues.Empty:
            if not proc.is_alive():
                raise SystemExit(f"{target.__name__} died with exit code {proc.exitcode}"
                                 f"{' (killed: out of memory?)' if proc.exitcode == -9 else ''}") from None
    proc.join()
    return result


def _time_worker(max_new_tokens: int, out: str, precision: str, queue) -> None:
    """One SCoRe step (after a warm-up step) and the bare floor on the same episodes, in a fresh process."""
    torch.manual_seed(0)
    trainer = _trainer(max_new_tokens, out, precision)
    trainer.train_step()                      # warm-up (allocator, kernels); not timed
    _reset_peak()
    start = time.perf_counter()
    row = trainer.train_step()
    ours = time.perf_counter() - start
    peak = _rss_mb()
    floor = _floor(trainer, trainer.last_episodes, max_new_tokens, precision)
    queue.put({"ours": ours, "row": {k: row[k] for k in ("time_generate_s", "time_train_s", "generated_tokens")},
               "phases": _phases(row), "floor": floor, "peak_rss_mb": peak})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default="runs/bench-train-step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps for the TRL comparison (after 1 warm-up)")
    parser.add_argument("--parts", default="time,memory,trl", help="which of time, memory, trl to run")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="bf16 autocast for every side (default), or fp32 (a CPU without native bf16)")
    args = parser.parse_args()
    print(f"precision {args.precision}, {torch.get_num_threads()} threads")
    parts = {p.strip() for p in args.parts.split(",")}
    ratios = []

    if "time" in parts:          # each part in its own process: the parent stays small (memory children)
        timed = _in_process(_time_worker, args.max_new_tokens, args.out, args.precision)
        ours, row, floor = timed["ours"], timed["row"], timed["floor"]
        floor_total = sum(floor.values())
        print(f"selfcorrect step : {ours:6.1f} s ({row['generated_tokens']} tokens; peak RSS during the step "
              f"{timed['peak_rss_mb'] / 1024:.2f} GB)")
        print(f"  by phase (s)   : {_phase_line(timed['phases'])}")
        print(f"floor            : {floor_total:6.1f} s")
        print(f"  by phase (s)   : generate {floor['generate']:.2f}, reference (no-grad forward) "
              f"{floor['forward']:.2f}, policy forward {floor['train_forward']:.2f}, backward {floor['backward']:.2f}, "
              f"optimizer {floor['optimizer']:.2f}")
        ratios.append(f"ratio time   (step / floor)                  : {ours / floor_total:.2f}x  (target <= 0.45)")
        ratios.append(f"peak RSS of the step                          : {timed['peak_rss_mb'] / 1024:.2f} GB  "
                      f"({timed['peak_rss_mb'] / 1024 / 4.4:.2f}x the 4.4 GB before issue 16; target <= 1.1)")

    if "memory" in parts:
        mem = {}
        for mode, checkpointing, label in (("selfcorrect", True, "selfcorrect (default: checkpointed layers)"),
                                           ("full_logits", False, "naive full logits"),
                                           ("full_logits", True, "full logits + checkpointed layers")):
            mem[label] = _measure_memory(mode, checkpointing, args.max_new_tokens, args.out + "-mem", args.precision)
            print(f"peak memory {label:<42}: {mem[label]['peak_mb']:7.0f} MB above the loaded model "
                  f"({mem[label]['tokens']} tokens)")
        mem_ours, mem_naive, mem_same = (mem[k]["peak_mb"] for k in mem)
        ratios.append(f"ratio memory (selfcorrect / naive full logits): {mem_ours / mem_naive:.2f}x  "
                      f"(target <= 0.5); logits alone (both checkpointed): {mem_ours / mem_same:.2f}x")

    if "trl" in parts:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL comparison skipped: pip install -e '.[bench]'")
        else:
            single = _in_process(_ours_single_turn_worker, args.steps, args.out + "-single", args.precision)
            theirs = _in_process(_trl_worker, args.steps, args.out + "-trl", args.precision)
            for name, r in (("selfcorrect single-turn", single), ("TRL RLOOTrainer", theirs)):
                print(f"{name:<24}: {r['seconds_per_step']:6.1f} s/step  {r['tokens_per_s']:6.1f} tokens/s  "
                      f"peak RSS while training {r['peak_rss_mb']:.0f} MB")
                print(f"  by phase (s/step)     : {_phase_line(r['phases'])}")
            ratios.append(f"ratio tokens/s (selfcorrect / TRL RLOO)       : "
                          f"{single['tokens_per_s'] / theirs['tokens_per_s']:.2f}x  (target >= 4)")
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
