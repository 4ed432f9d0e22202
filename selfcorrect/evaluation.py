"""``selfcorrect eval``: roll out K attempts per problem, score them, write the paper's metrics.

Outputs in ``--out DIR``:

* ``metrics.json`` — :func:`selfcorrect.metrics.summarize` of the rollout
  (``n``, ``attempts``, ``accuracy``, ``delta``, ``delta_i2c``, ``delta_c2i``,
  ``edit_distance_ratio``, ``copy_rate``, ``ci95``, ...) plus the config;
* ``samples.jsonl`` — one line per episode: problem id, sample index, question, gold answer,
  and per attempt its text, parsed answer, reward, the reason it scored 0 (no parsable answer,
  wrong answer, a failing test, timeout, sandbox refusal), token count and truncation flag;
* ``report.md`` — the paper-style table;
* ``edit_ratio.png`` and ``accuracy.png``;
* with ``--scaling``: ``scaling.json``, ``scaling.md`` and ``scaling.png``
  (majority vote over B first attempts vs over B/2 self-corrected episodes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics, plots
from .config import to_dict
from .errors import ConfigError
from .files import atomic_write, write_json
from .models import resolve_device
from .results import summarize_episodes, write_eval_outputs
from .rollout import (ConversationBuilder, Episode, SamplingParams, attempt_progress, backend_capabilities,
                      build_backend, extend_episodes, new_episodes)
from .rollout.backends import GREEDY
from .rollout.settings import SamplingSettings


@dataclass
class EvalConfig(SamplingSettings):
    """Settings of one ``selfcorrect eval`` run.

    The sampling fields are :class:`~selfcorrect.rollout.settings.SamplingSettings`, shared with
    ``selfcorrect train``; evaluation decodes greedily by default.  ``backend`` and ``batch_size``
    are the old names of ``rollout_backend`` and ``generation_batch_size``.
    """

    model: str = "default"
    """Model spec: ``default``, a local HF directory (e.g. a training checkpoint), a .gguf file, or a hub id."""
    chat_template: str = ""
    """Chat template for every attempt's turns and the correction instruction: empty = the model's own; a built-in name (plain: Question/Answer turns for base models), a Jinja file, or an inline template.  Saved with the tokenizer in checkpoints."""
    task: str = "arithmetic"
    """Task name (arithmetic, math, gsm8k, humaneval, mbpp) or ``module:function`` / ``file.py:function``."""
    task_options: dict[str, Any] = field(default_factory=dict, metadata={"append": True, "aliases": ("-o",)})
    """Task factory options as KEY=VALUE (repeatable), e.g. ``-o digits=3 -o path=data/test.jsonl``."""
    split: str | None = "test"
    """Split to evaluate, given to the task as its ``split`` option when it has one (tasks without splits ignore it)."""
    limit: int | None = None
    """Evaluate only the first N problems of the task (None = all)."""
    samples: int = field(default=1, metadata={"aliases": ("--n",)})
    """Samples (episodes) per problem (``--n``, as vLLM's ``n``)."""
    attempts: int = 2
    """Attempts per episode, K >= 1 (attempt k > 1 follows the self-correction instruction)."""
    temperature: float = GREEDY
    """Sampling temperature; 0 = greedy, the paper's evaluation protocol."""
    seed: int = 0
    """Seed of sampling (one generator per problem, sample and attempt) and of the bootstrap CIs."""
    vllm_gpu_memory_utilization: float = 0.9
    """Share of GPU memory the vLLM engine may take (evaluation has the GPU to itself)."""
    dtype: str = "auto"
    """Parameter dtype: auto (bf16 on CPU and bf16-capable GPUs), float32, bfloat16, float16."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    system_prompt: str | None = None
    """Optional system turn placed before the first user turn (None: the template's default)."""
    out: str = "runs/eval"
    """Output directory (created; existing result files in it are replaced)."""
    scaling: bool = False
    """Also run the inference-time scaling study (paper §6.2) at the budgets below."""
    budgets: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    """Sample budgets B for --scaling (even numbers: B/2 episodes of two attempts)."""
    scaling_temperature: float = 0.7
    """Sampling temperature of the scaling study (the paper samples at 0.7)."""

    def __post_init__(self) -> None:
        if not str(self.out).strip():
            raise ConfigError("out is empty: give an output directory (an unset shell variable?)")
        if self.chat_template:
            from .models import chat_template_text

            chat_template_text(self.chat_template)          # a missing file or unknown name: one line, now
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"attempts must be an integer >= 1, got {self.attempts!r}")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"samples must be an integer >= 1, got {self.samples!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 (or None for all problems), got {self.limit!r}")
        self.check_sampling()
        if self.temperature == 0.0 and self.samples > 1:
            raise ConfigError("samples > 1 with greedy decoding (temperature 0) gives identical copies; "
                              "set a temperature > 0")
        SamplingParams(temperature=self.scaling_temperature)
        bad = [b for b in self.budgets if b < 2 or b % 2]
        if self.scaling and (not self.budgets or bad):
            raise ConfigError(f"budgets must be even numbers >= 2, got {self.budgets!r}")


# --------------------------------------------------------------------------- #
# Inference-time scaling (paper §6.2)
# --------------------------------------------------------------------------- #


def scaling_table(episodes: Sequence[Episode], budgets: Sequence[int], same: Callable[[str, str], bool],
                  seed: int = 0) -> list[dict[str, Any]]:
    """Majority-vote accuracy at each budget B: B first attempts vs B/2 (attempt 1 → attempt 2) episodes.

    ``episodes`` hold, per problem, at least ``max(budgets)`` samples; the
    first ``max(budgets) / 2`` of them also have a second attempt.  Parallel
    votes over attempt-1 answers of samples ``0..B-1``; sequential votes over
    the attempt-2 answers of samples ``0..B/2-1``.  The vote's winner is
    correct if any attempt carrying that answer was rewarded 1.
    """
    by_problem: dict[str, list[Episode]] = {}
    for ep in episodes:
        by_problem.setdefault(ep.problem.id, []).append(ep)
    rows = []
    for b in sorted(budgets):
        parallel, sequential = [], []
        for group in by_problem.values():
            group = sorted(group, key=lambda e: e.sample)
            parallel.append(_vote_correct([e.attempts[0] for e in group[:b]], same))
            sequential.append(_vote_correct([e.attempts[1] for e in group[: b // 2]], same))
        row: dict[str, Any] = {"budget": b, "problems": len(parallel)}
        for key, values in (("parallel", parallel), ("sequential", sequential)):
            hits = int(sum(values))
            row[key] = hits / len(values)
            row[f"{key}_ci"] = list(metrics.wilson_interval(hits, len(values)))
        rows.append(row)
    return rows


def _vote_correct(attempts: Sequence, same: Callable[[str, str], bool]) -> bool:
    winner = metrics.majority_vote([a.answer for a in attempts], same=same)
    if winner is None:
        return False
    return any(a.reward == 1.0 for a in attempts if a.answer is not None and same(a.answer, winner))


def scaling_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| budget | parallel (B first attempts) | sequential (B/2 × 2 attempts) |", "|---:|---:|---:|"]
    for r in rows:
        cells = [f"{100 * r[k]:.1f} [{100 * r[k + '_ci'][0]:.1f}, {100 * r[k + '_ci'][1]:.1f}]"
                 for k in ("parallel", "sequential")]
        lines.append(f"| {r['budget']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #


def prepare(config: EvalConfig):
    """Load task, model and tokenizer; every user error surfaces here, before any generation."""
    from .lora import is_adapter_dir
    from .models import load_model, load_tokenizer
    from .tasks import accepts_option, load_task

    device = resolve_device(config.device)
    options = dict(config.task_options)
    if config.split is not None and "split" not in options and accepts_option(config.task, "split"):
        options["split"] = config.split
    task = load_task(config.task, **options)
    problems = task.problems[: config.limit] if config.limit else list(task.problems)
    if not problems:
        raise ConfigError(f"task {config.task!r} has no problems with options {config.task_options}")
    tokenizer = load_tokenizer(config.model, chat_template=config.chat_template)
    if backend_capabilities(config).loads_own_weights and not is_adapter_dir(config.model):
        return task, problems, None, tokenizer          # the engine loads the weights itself
    model = load_model(config.model, dtype=config.dtype, device=device)
    return task, problems, model, tokenizer


def make_backend(config: EvalConfig, model, tokenizer):
    """The generation backend of an evaluation (a LoRA checkpoint reaches an engine as merged weights)."""
    backend = build_backend(config, model, tokenizer, model_spec=config.model, dtype=config.dtype, seed=config.seed)
    if model is not None:
        from .lora import merged_weights

        backend.sync_weights(lambda: merged_weights(model))
    return backend


def run_eval(config: EvalConfig, progress_factory: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """Run one evaluation (see module docstring); returns the metrics dict.

    ``progress_factory(description, total)`` returns a callable that advances
    a progress display by ``n`` (the CLI passes a rich progress bar).
    """
    from .run_dir import check_output_dir
    from .tasks.splits import source_label

    out = Path(config.out)
    check_output_dir(out)                         # before the model loads or anything is generated
    task, problems, model, tokenizer = prepare(config)
    builder = ConversationBuilder(tokenizer, task.correction_instruction, config.system_prompt)
    backend = make_backend(config, model, tokenizer)
    progress = progress_factory or (lambda description, total: None)

    started = time.perf_counter()
    episodes = new_episodes(builder, task, problems, config.samples)
    advance = attempt_progress(progress, "generating", len(episodes), config.attempts, len(problems))
    for k in range(config.attempts):   # per-row seeds: samples do not depend on --batch-size
        extend_episodes(backend, builder, task, episodes, config.sampling_params(), advance, seed=config.seed,
                        more=k + 1 < config.attempts)
    seconds = time.perf_counter() - started

    summary = summarize_episodes(episodes, seed=config.seed)
    split = task.options.get("split", config.split) or "all"
    summary["split"] = {"task": task.name, "split": split, "problems": len(task.problems), "evaluated": len(problems),
                        "source": source_label(task.name, task.options)}
    generated = sum(len(a.ids) for ep in episodes for a in ep.attempts)
    extra = {"task": task.name, "model": config.model, "config": to_dict(config),
             "timing": {"seconds": round(seconds, 2), "generated_tokens": generated,
                        "tokens_per_second": round(generated / max(seconds, 1e-9), 1)}}
    title = (f"{config.model} on {task.name} (greedy)" if config.temperature == 0 else
        f"{config.model} on {task.name} (T={config.temperature})")
    write_eval_outputs(out, summary, episodes, title, extra)

    if config.scaling:
        summary["scaling"] = run_scaling(config, task, problems, builder, backend, progress)
        write_json(out / "metrics.json", {**summary, **extra})
    return summary


def run_scaling(config: EvalConfig, task, problems, builder, backend, progress) -> list[dict[str, Any]]:
    """Sample max(B) first attempts per problem, self-correct the first max(B)/2, vote at each budget."""
    top = max(config.budgets)
    params = config.sampling_params(temperature=config.scaling_temperature)
    episodes = new_episodes(builder, task, problems, top)
    advance = progress("scaling", len(episodes) + len(problems) * (top // 2))
    extend_episodes(backend, builder, task, episodes, params, advance, seed=config.seed + 1, more=True)
    for ep in episodes:
        if ep.sample >= top // 2:          # no second attempt: free its cache now
            ep.decode_state = None
    extend_episodes(backend, builder, task, [ep for ep in episodes if ep.sample < top // 2], params, advance,
                    seed=config.seed + 1)
    rows = scaling_table(episodes, config.budgets, task.answers_match, seed=config.seed)
    out = Path(config.out)
    write_json(out / "scaling.json", rows)
    with atomic_write(out / "scaling.md") as fh:
        fh.write(f"# Inference-time scaling: {config.model} on {task.name} (T={config.scaling_temperature})\n\n"
                 f"{scaling_markdown(rows)}\n")
    plots.plot_scaling(rows, out / "scaling.png", title=f"{task.name}: majority vote vs. self-correction")
    return rows
