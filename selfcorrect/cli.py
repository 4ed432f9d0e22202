"""The ``selfcorrect`` command.

Subcommands: ``eval`` (K-attempt evaluation with the paper's metrics), ``demo``
(the default end-to-end job), ``tasks`` (list tasks).  Every subcommand takes
``--config FILE.yaml`` plus one flag per config field; flags override the file.

User errors (bad flag value, unknown task/model, malformed data, missing file)
print one ``selfcorrect: error: ...`` line and exit with status 2 — never a
traceback.  ``SELFCORRECT_DEBUG=1`` re-raises them for debugging.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import add_arguments, build_config
from .errors import SelfCorrectError

EXIT_USAGE = 2


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, generation-config notices) out of the CLI output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def rich_progress(console) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A factory ``(description, total) -> advance(n)`` backed by one rich progress display."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        def factory(description: str, total: int) -> Callable[[int], None]:
            task_id = progress.add_task(description, total=total)
            return lambda n: progress.advance(task_id, n)

        yield factory


def _console():
    from rich.console import Console

    return Console(stderr=True)


# --------------------------------------------------------------------------- #
# Subcommands
# --------------------------------------------------------------------------- #


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import EvalConfig, run_eval
    from .metrics import rich_table

    config = build_config(EvalConfig, args, args.config)
    console = _console()
    with rich_progress(console) as factory:
        summary = run_eval(config, factory)
    console.print(rich_table(summary, title=f"{config.model} · {config.task}"))
    if summary.get("scaling"):
        from .evaluation import scaling_markdown

        console.print(scaling_markdown(summary["scaling"]))
    console.print(f"wrote {Path(config.out).resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The default job: evaluate the embedded model on the default arithmetic test split."""
    from .evaluation import EvalConfig, run_eval
    from .metrics import rich_table

    overrides = _drop_none({"out": args.out, "limit": args.limit})
    config = build_config(EvalConfig, overrides, args.config)
    console = _console()
    console.print(f"[bold]selfcorrect demo[/]: {config.model} on {config.task}, "
                  f"{config.attempts} attempts, {config.limit or 'all'} problems")
    with rich_progress(console) as factory:
        summary = run_eval(config, factory)
    console.print(rich_table(summary, title="base model (prompting only)"))
    console.print(f"wrote {Path(config.out).resolve()}")
    return 0


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

    parser = argparse.ArgumentParser(
        prog="selfcorrect",
        description="Train and evaluate language models that correct their own mistakes (SCoRe).",
    )
    parser.add_argument("--version", action="version", version=f"selfcorrect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="evaluate K attempts per problem with the paper's metrics",
                       description="Roll out K attempts per problem and write metrics.json, samples.jsonl, "
                                   "report.md and plots to --out.")
    p.add_argument("--config", metavar="FILE", help="YAML file with EvalConfig fields; flags override it")
    add_arguments(p, EvalConfig)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the default end-to-end job on the embedded model")
    p.add_argument("--config", metavar="FILE", default=str(_configs_dir() / "demo.yaml"))
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--limit", type=int, default=None, help="number of test problems (default: from the config)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tasks", help="list the built-in tasks and their options")
    p.set_defaults(func=cmd_tasks)
    return parser


def _configs_dir() -> Path:
    return Path(__file__).resolve().parent / "configs"


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
    except KeyboardInterrupt:
        print("selfcorrect: interrupted", file=sys.stderr)
        return 130


def _drop_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


if __name__ == "__main__":
    sys.exit(main())
