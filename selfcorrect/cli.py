"""The ``selfcorrect`` command.

Subcommands: ``train`` (SCoRe and RL baselines), ``eval`` (K-attempt evaluation
with the paper's metrics), ``probe`` (the correction signal before training),
``demo`` (the default end-to-end job), ``tasks`` (list tasks).  Every subcommand takes
``--config FILE.yaml`` plus one flag per config field; flags override the file.

User errors (bad flag value, unknown task/model, malformed data, missing file)
print one ``selfcorrect: error: ...`` line and exit with status 2 — never a
traceback.  ``SELFCORRECT_DEBUG=1`` re-raises them for debugging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import add_arguments, build_config, flag_values
from .distributed import TrainingStopped
from .errors import ConfigError, SelfCorrectError
from .report import split_note

EXIT_USAGE = 2


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, generation-config notices) out of the CLI output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Where DeepSpeed is installed, accelerate imports it whenever transformers saves a model -- in runs
    # that never use it -- and it then warns on stdout that it found no GPU.  Without CUDA, say "cpu"
    # (what it would pick anyway) before it asks.
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def plain_progress(stream) -> Callable[[str, int], Callable[[int], None]]:
    """The :func:`rich_progress` factory for output that is not a terminal: one flushed line per
    advance (a batch of generations), with the count, elapsed time and ETA."""
    import time

    def factory(description: str, total: int) -> Callable[[int], None]:
        started, done = time.monotonic(), [0]

        def advance(n: int) -> None:
            done[0] += n
            elapsed = time.monotonic() - started
            eta = elapsed / done[0] * max(total - done[0], 0) if done[0] else 0.0
            print(f"{description}: {done[0]}/{total} ({100.0 * done[0] / max(total, 1):.0f}%)  "
                  f"{_duration(elapsed)} elapsed, ETA {_duration(eta)}", file=stream, flush=True)
        return advance
    return factory


def _progress_bar(console, *extra, elapsed: bool = True, transient: bool = False):
    """A rich progress display: description, bar, n/total, [elapsed,] time left, then ``extra`` columns."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
        TimeRemainingColumn)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               *([TimeElapsedColumn()] if elapsed else []), TimeRemainingColumn(), *extra]
    return Progress(*columns, console=console, transient=transient)


@contextlib.contextmanager
def rich_progress(console) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A factory ``(description, total) -> advance(n)`` backed by one rich progress display (or plain
    lines, :func:`plain_progress`, when the console is not a terminal)."""
    if not console.is_terminal:
        yield plain_progress(console.file)
        return

    progress = _progress_bar(console)

    def factory(description: str, total: int) -> Callable[[int], None]:
        if not progress.live.is_started:  # start on first use: an early error prints nothing but its line
            progress.start()
        task_id = progress.add_task(description, total=total)
        return lambda n: progress.advance(task_id, n)

    try:
        yield factory
    finally:
        if progress.live.is_started:
            progress.stop()


def _console():
    from rich.console import Console

    return Console(stderr=True)


# --------------------------------------------------------------------------- #
# Subcommands
# --------------------------------------------------------------------------- #


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import EvalConfig, run_eval

    config = build_config(EvalConfig, args, args.config)
    console = _console()
    with rich_progress(console) as factory:
        summary = run_eval(config, factory)
    _print_table(console, summary, f"{config.model} · {config.task}")
    if summary.get("scaling"):
        from .evaluation import scaling_markdown

        console.print(scaling_markdown(summary["scaling"]))
    console.print(f"wrote {Path(config.out).resolve()}")
    return 0


def _print_probe(console, result: dict[str, Any]) -> None:
    """The probe's lines; its verdict in bold (red without a signal) on a terminal."""
    from .probe import report_lines

    lines = report_lines(result)
    if not console.is_terminal:                       # a log file: whole lines, never wrapped at 80 columns
        print("\n".join(lines), file=console.file, flush=True)
        return
    for line in lines[:-1]:
        console.print(line, markup=False, highlight=False)
    signal = result["verdict"]["signal"]
    console.print(f"[bold {'green' if signal else 'red'}]{lines[-1]}[/]", highlight=False)


def cmd_probe(args: argparse.Namespace) -> int:
    from .config import flag_values
    from .probe import ProbeConfig, run_probe

    config = build_config(ProbeConfig, args, args.config)
    if "out" not in flag_values(ProbeConfig, args):
        config.out = ProbeConfig.out                  # a training config's `out` is its run directory, not ours
    console = _console()
    with rich_progress(console) as factory:
        result = run_probe(config, factory, announce=lambda line: console.print(line, highlight=False))
    _print_probe(console, result)
    console.print(f"wrote {Path(config.out).resolve()} (probe.json, probe.md, samples.jsonl; {result['seconds']:.0f} s)",
                  highlight=False)
    return 0


def step_line(row: dict[str, Any], step: int, total: int, seconds: float, warn_gap: float) -> str:
    """One step as plain text: where, rewards / Δ / copy rate / KL per attempt, the log-prob gap, speed, ETA."""
    attempts = sorted(int(k[len("reward_t"):]) for k in row if k.startswith("reward_t"))
    parts = [f"step {step}/{total}", f"it{row['iteration']} {row['phase']}"]
    parts += [" ".join(f"r{k}={row[f'reward_t{k}']:.2f}" for k in attempts)]
    if "delta" in row:
        parts.append(f"Δ={row['delta']:+.2f} copy={row['copy_rate']:.2f}")
    parts.append(_format_and_validation(row))
    # SFT methods log no KL; a NaN KL (no episodes of that attempt this step) is left out too.
    kls = [f"kl{k}={row[f'kl_t{k}']:.3f}" for k in attempts if not math.isnan(row.get(f"kl_t{k}", math.nan))]
    if kls:
        parts.append(" ".join(kls))
    # The rollout/trainer log-prob gap (nats per token, worst attempt): ~0 when on-policy.
    gaps = [v for k, v in row.items() if k.startswith("logp_gap_mean_t") and v == v]
    if gaps:
        parts.append(f"gap={max(gaps):.1e}" + (" (above logprob_gap_warn)" if max(gaps) > warn_gap else ""))
    parts.append(f"loss={row['loss']:.3f}")
    if row.get("skipped"):
        parts.append("skipped (non-finite)")
    parts.append(f"{seconds:.1f} s/step, ETA {_duration(seconds * max(total - step, 0))}")
    return "  ".join(p for p in parts if p)


def _format_and_validation(row: dict[str, Any]) -> str:
    """``fmt=0.62/0.58`` (answers in the instructed form, per attempt) and, on a step with a validation
    evaluation, ``val=0.31/0.34`` (its accuracy per attempt)."""
    def per_attempt(prefix: str) -> str:
        keys = sorted((k for k in row if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
        return "/".join(f"{row[k]:.2f}" for k in keys)
    parts = [f"{label}={values}" for label, values in (("fmt", per_attempt("format_t")),
                                                       ("val", per_attempt("validation_acc_t"))) if values]
    return " ".join(parts)


def _print_table(console, summaries, title: str) -> None:
    """The metrics table: rich on a terminal; off one (a log file, ``make demo > log``) the markdown table,
    whose ten columns a fixed-width rich table would cut to ``Acc@…``."""
    from .report import format_table, rich_table

    if console.is_terminal:
        console.print(rich_table(summaries, title=title))
    else:
        print(f"{title}\n\n{format_table(summaries)}\n", file=console.file, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _live_train(trainer, console) -> dict[str, Any]:
    """Run ``trainer.train()`` under a rich progress bar on a terminal, or one flushed plain line per step
    when the output goes to a file (a cluster job's log, ``make demo > log``)."""
    import time

    from rich.progress import TextColumn

    config = trainer.config
    if not console.is_terminal:
        last = [time.monotonic()]

        def plain(step: int, row: dict[str, Any]) -> None:
            now = time.monotonic()
            print(step_line(row, step, config.total_steps, now - last[0], config.logprob_gap_warn),
                  file=console.file, flush=True)
            last[0] = now

        return trainer.train(plain)
    with _progress_bar(console, TextColumn("{task.fields[stats]}")) as progress:
        bar = progress.add_task(f"{config.method}", total=config.total_steps, completed=trainer.step, stats="")

        def on_step(step: int, row: dict[str, Any]) -> None:
            rewards = " ".join(f"r{k[-1]}={row[k]:.2f}" for k in row if k.startswith("reward_t"))
            extra = f" Δ={row['delta']:+.2f} copy={row['copy_rate']:.2f}" if "delta" in row else ""
            shown = _format_and_validation(row)
            extra += f" {shown}" if shown else ""
            gaps = [v for k, v in row.items() if k.startswith("logp_gap_mean_t") and v == v]
            gap = f" gap={max(gaps):.1e}" if gaps else ""
            if gaps and max(gaps) > config.logprob_gap_warn:
                gap = f" [red]{gap.strip()}[/]"
            skipped = " [red]skipped (non-finite)[/]" if row.get("skipped") else ""
            progress.update(bar, completed=step,
                            description=f"{config.method} it{row['iteration']} stage {row['stage']}",
                            stats=f"{rewards}{extra} loss={row['loss']:.3f}{gap}{skipped}")

        outside, trainer.eval_progress = trainer.eval_progress, _eval_progress(console, progress)
        try:
            return trainer.train(on_step)
        finally:
            trainer.eval_progress = outside


def _run_training(config, console, compare_base: bool) -> int:
    from .results import write_eval_outputs
    from .trainer import Trainer

    trainer = Trainer.create(config)
    trainer.eval_progress = _eval_progress(console)
    if config.probe:
        from .probe import probe_trainer

        console.print(f"probing the correction signal on {config.probe_problems} training problems ...")
        result = probe_trainer(trainer, _eval_progress(console))
        if trainer.dist.main:
            _print_probe(console, result)
            if not result["verdict"]["signal"]:
                print("WARNING: the probe finds no correction signal at these settings: RL has few or no "
                      "wrong->right second attempts to reinforce, and a trained Δ near 0 is the likely outcome "
                      "(docs/probe.md).", file=sys.stderr, flush=True)
    summaries = {}
    test = split_note(trainer.splits.sources["test"], min(config.eval_limit, len(trainer.test_task.problems)))
    if compare_base:
        console.print(f"evaluating the base model on {test} ...")
        base, episodes = trainer.evaluate_on_main("test")
        if base is not None:
            write_eval_outputs(trainer.run_dir / "eval-base", base, episodes, "base model",
                               {"splits": trainer.splits.sources})
            summaries["base (prompting only)"] = base
    result = _live_train(trainer, console)
    if result["final_eval"] is None:           # not the main process of a multi-process run: it reports nothing
        return 0
    _finish_training(trainer, console, result["final_eval"], base=summaries.get("base (prompting only)"))
    return 0


def _finish_training(trainer, console, final: dict[str, Any], base: dict[str, Any] | None = None) -> None:
    """What every run ends with, fresh or resumed: the held-out table (the base model's beside it when the
    run evaluated it, now or when it started), comparison.md, report.html, the run directory."""
    from .report import format_table

    config, run = trainer.config, trainer.run_dir
    if base is None and (run / "eval-base" / "metrics.json").is_file():
        base = json.loads((run / "eval-base" / "metrics.json").read_text())
    summaries = {"base (prompting only)": base} if base is not None else {}
    summaries[f"{config.method} ({trainer.step} steps)"] = final
    test = split_note(trainer.splits.sources["test"], final.get("n_groups") or final.get("n"))
    _print_table(console, summaries, f"{test}, greedy, 95% CIs")
    if base is not None:
        (run / "comparison.md").write_text(
            f"# {config.model} on {config.task}: base vs trained\n\n{format_table(summaries)}\n")
    _run_report(trainer, summaries)
    console.print(f"wrote {(run / 'report.html').resolve()}")
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file() and not p.is_symlink())
    console.print(f"run directory: {run.resolve()} (eval/ plots, training_curves.png, checkpoints; "
                  f"{size / 1e9:.2f} GB on disk)")


def _eval_progress(console, live=None) -> Callable[[str, int], Callable[[int], None]]:
    """Progress of the evaluations inside a training run: plain lines off a terminal; on one, a bar
    in the training display ``live`` (rich allows one live display at a time) or, before training
    starts, a display of its own; each bar goes away when its evaluation ends."""
    if not console.is_terminal:
        return plain_progress(console.file)

    def factory(description: str, total: int) -> Callable[[int], None]:
        progress = live or _progress_bar(console, elapsed=False, transient=True)
        task = progress.add_task(description, total=total, stats="")
        done = [0]

        def advance(n: int) -> None:
            if live is None and not progress.live.is_started:
                progress.start()
            done[0] += n
            progress.update(task, completed=done[0])
            if done[0] >= total:
                progress.remove_task(task)
                if live is None:
                    progress.stop()
        return advance
    return factory


def _run_report(trainer, summaries) -> None:
    """``RUN/report.html``: the held-out table (base and trained), the training curves and the final
    evaluation's plots and episodes."""
    from .files import read_jsonl
    from .html_report import write_report

    run, config = trainer.run_dir, trainer.config
    samples = run / "eval" / "samples.jsonl"
    write_report(run / "report.html", f"{config.method} · {config.model} · {config.task}", summaries,
                 read_jsonl(samples) if samples.is_file() else [],
                 [run / "training_curves.png", run / "eval" / "accuracy.png", run / "eval" / "edit_ratio.png",
                  run / "eval-base" / "accuracy.png"],
                 notes=[f"{trainer.step} optimizer steps; evaluated once at the end on "
                        f"{split_note(trainer.splits.sources['test'], len(read_jsonl(samples)) if samples.is_file() else 0)}"
                        ", greedy", "samples: the trained model's final evaluation"],
                 probe=_probe_lines(run))


def _probe_lines(run: Path) -> list[str]:
    from .probe import read_probe, report_lines

    result = read_probe(run)
    return report_lines(result) if result else []


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import TrainConfig, Trainer

    console = _console()
    if args.resume:
        trainer = Trainer.resume(args.resume, overrides=flag_values(TrainConfig, args))
        trainer.eval_progress = _eval_progress(console)
        final = trainer.run_dir / "eval" / "metrics.json"
        if trainer.step >= trainer.config.total_steps and final.is_file():
            # Complete already: show its results again instead of re-running the test evaluation.
            console.print(f"{args.resume} is complete ({trainer.step}/{trainer.config.total_steps} steps): "
                          "nothing to train")
            _finish_training(trainer, console, json.loads(final.read_text()))
            return 0
        console.print(f"resuming {args.resume} at step {trainer.step}/{trainer.config.total_steps}")
        result = _live_train(trainer, console)
        if result["final_eval"] is not None:
            _finish_training(trainer, console, result["final_eval"])
        return 0
    config = build_config(TrainConfig, args, args.config)   # no --config: the defaults --help shows
    return _run_training(config, console, compare_base=args.compare_base)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import run_compare
    from .trainer import TrainConfig

    if not args.out.strip():
        raise ConfigError("--out is empty: give the comparison's directory (an unset shell variable?)")
    config = build_config(TrainConfig, {**vars(args), "overwrite": True}, args.config)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    console = _console()
    out = Path(args.out)

    def on_run(method: str, seed: int, what: str) -> None:
        console.print(f"[bold]{method}[/] seed {seed}: {what}")

    table = run_compare(config, methods, seeds, out, train=lambda trainer: _live_train(trainer, console),
                        on_run=on_run, warm_start_steps=args.warm_start_steps)
    text = (out / "table.md").read_text()
    if console.is_terminal:
        console.print(text)
    else:                        # a log file: markdown as written, never wrapped at rich's 80 columns
        print(text, file=console.file, flush=True)
    console.print(f"wrote {out.resolve()} (table.md, table.json, report.html, edit_ratio.png, training_curves.png, "
                  "delta.png)")
    return 0 if table else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The default job: the controlled testbed's warm start (built once), the probe, SCoRe, then base vs
    trained on held-out problems (docs/testbed.md)."""
    from .run_dir import check_output_dir
    from .testbed import ensure_demo_warm_start
    from .trainer import TrainConfig

    config = build_config(TrainConfig, {"out": args.out, "overwrite": True}, args.config)
    console = _console()
    console.print(f"[bold]selfcorrect demo[/]: {config.method} on {config.model} / {config.task}, "
                  f"{config.iterations} iterations of Stage I ({config.stage1_steps} steps) → Stage II "
                  f"({config.stage2_steps} steps), then base vs trained, greedy, on {config.eval_limit} test problems")
    check_output_dir(Path(config.out))                # a bad --out is refused before the warm start's minutes
    ensure_demo_warm_start(config.model, log=lambda line: console.print(line, highlight=False))
    return _run_training(config, console, compare_base=True)


def cmd_tasks(args: argparse.Namespace) -> int:
    import inspect

    from .tasks import BUILTIN_TASKS, _find_factory

    for name in BUILTIN_TASKS:
        factory = _find_factory(name)
        doc = (inspect.getdoc(factory) or "").splitlines()[0]
        params = ", ".join(p for p in inspect.signature(factory).parameters)
        print(f"{name:<11} {doc}\n{'':<11} options: {params}")
    return 0


# --------------------------------------------------------------------------- #
# Parser and entry point
# --------------------------------------------------------------------------- #


def build_parser() -> argparse.ArgumentParser:
    from .evaluation import EvalConfig
    from .trainer import TrainConfig

    parser = argparse.ArgumentParser(
        prog="selfcorrect",
        description="Train and evaluate language models that correct their own mistakes (SCoRe).",
    )
    parser.add_argument("--version", action="version", version=f"selfcorrect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="evaluate K attempts per problem with the paper's metrics",
                       description="Roll out K attempts per problem and write metrics.json, samples.jsonl, "
                                   "report.md and plots to --out.")
    p.add_argument("--config", metavar="FILE", help="YAML file with EvalConfig fields, or a shipped config's name "
                                                    "(eval); flags override it")
    add_arguments(p, EvalConfig)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train with SCoRe (or an RL baseline)",
                       description="Train on a task's train split; checkpoints, logs and a final held-out "
                                   "evaluation go to --out.")
    p.add_argument("--config", metavar="FILE", help="YAML file with TrainConfig fields, or a shipped config's name "
                                                    "(demo, math, mbpp, humaneval); flags override it; without it "
                                                    "the defaults below apply")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly from its last checkpoint")
    p.add_argument("--compare-base", action="store_true", help="also evaluate the base model first and compare")
    add_arguments(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    from .probe import ProbeConfig

    p = sub.add_parser("probe", help="measure the correction signal RL would have, before training",
                       description="Sample N training problems x k samples at the training settings and report "
                                   "how often attempt 2 turns a wrong answer into a right one, with 95% CIs, and "
                                   "a verdict; writes probe.json, probe.md and samples.jsonl to --out.")
    p.add_argument("--config", metavar="FILE", help="YAML file with TrainConfig fields (the run to probe), or a "
                                                    "shipped config's name (demo, ...); flags override it. Its "
                                                    "`out` is ignored: the probe writes to --out")
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("compare", help="train several methods x seeds and write the paper-style comparison",
                       description="Train each --methods x --seeds run (resumable), evaluate all on the same "
                                   "held-out problems, write table.md/json and plots to --out.")
    p.add_argument("--config", metavar="FILE", help="YAML file with TrainConfig fields shared by every run, or a "
                                                    "shipped config's name (demo, math, ...)")
    p.add_argument("--methods", default="score,stage2-only,no-shaping,single-turn,star,pair-sft,prompting",
                   help="comma-separated methods (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--warm-start-steps", type=int, default=0, metavar="N",
                   help="first train N steps of single-turn RL once per seed (OUT/warm-start/seed-S); every "
                        "method then starts from that model, which is also its π_ref (default: 0, none)")
    p.add_argument("--out", default="runs/compare",
                   help="the comparison's directory: OUT/METHOD/seed-S per run, table.md/json, plots, "
                        "report.html (default: %(default)s)")
    add_arguments(p, TrainConfig, skip=("method", "seed", "overwrite", "out"))
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="SCoRe on the controlled testbed (its warm start built the first time), then "
                                    "base vs trained (what `make demo` runs)")
    p.add_argument("--config", metavar="FILE", default="demo", help="the run's config (default: %(default)s)")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tasks", help="list the built-in tasks and their options")
    p.set_defaults(func=cmd_tasks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SelfCorrectError as err:
        if os.environ.get("SELFCORRECT_DEBUG"):
            raise
        print(f"selfcorrect: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingStopped as stopped:
        run = stopped.checkpoint.parent
        print(f"selfcorrect: {stopped}; continue with: selfcorrect train --resume {run}", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:
        print("selfcorrect: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
