"""From episodes to results: the paper's metrics of a rollout and the files an evaluation leaves.

:func:`summarize_episodes` is :func:`selfcorrect.metrics.summarize` over episodes; :func:`episode_record`
is an episode's ``samples.jsonl`` line; :func:`write_eval_records` writes ``metrics.json`` and
``samples.jsonl`` (what pooling over seeds reads), :func:`write_eval_outputs` those plus ``report.md``,
``report.html`` and the plots.  ``selfcorrect eval``, the trainer's evaluations, the probe and compare all
go through here, so every evaluation's files have one format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics, plots, report
from .errors import ConfigError
from .files import atomic_write, write_json, write_jsonl
from .html_report import write_report
from .rollout import Episode


def summarize_episodes(episodes: Sequence[Episode], seed: int = 0) -> dict[str, Any]:
    """:func:`metrics.summarize` over episodes that all have the same number of attempts."""
    if not episodes:
        raise ConfigError("no episodes to summarize (the task selected zero problems)")
    return metrics.summarize(
        rewards=np.array([[a.reward for a in ep.attempts] for ep in episodes], dtype=float),
        texts=[[a.text for a in ep.attempts] for ep in episodes],
        parsed=[[a.answer for a in ep.attempts] for ep in episodes],
        truncated=np.array([[a.truncated for a in ep.attempts] for ep in episodes], dtype=bool),
        lengths=np.array([[len(a.ids) for a in ep.attempts] for ep in episodes], dtype=float),
        group_ids=[ep.problem.id for ep in episodes],
        formatted=None if any(a.formatted is None for ep in episodes for a in ep.attempts) else
        np.array([[a.formatted for a in ep.attempts] for ep in episodes], dtype=bool),
        lenient=None if any(a.lenient is None for ep in episodes for a in ep.attempts) else
        np.array([[a.lenient for a in ep.attempts] for ep in episodes], dtype=float),
        seed=seed,
    )


def episode_record(ep: Episode) -> dict[str, Any]:
    """The ``samples.jsonl`` line of an episode."""
    return {
        "id": ep.problem.id,
        "sample": ep.sample,
        "question": ep.problem.question,
        "gold": ep.problem.answer,
        "attempts": [
            {"text": a.text, "answer": a.answer, "reward": a.reward, "reason": a.reason, "tokens": len(a.ids),
             "truncated": a.truncated, "formatted": a.formatted,
             **({} if a.lenient is None else {"lenient": a.lenient})}      # tasks with a lenient reader only
            for a in ep.attempts
        ],
    }


def write_eval_records(out: Path, summary: dict[str, Any], episodes: Sequence[Episode],
                       extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """metrics.json and samples.jsonl (one record per problem): what pooling over seeds needs.  Returns
    the records.  The periodic test evaluations of a learning curve write only these."""
    out.mkdir(parents=True, exist_ok=True)
    records = [episode_record(ep) for ep in episodes]
    write_jsonl(out / "samples.jsonl", records)
    write_json(out / "metrics.json", {**summary, **(extra or {})})   # last: its presence marks "finished"
    return records


def write_eval_outputs(out: Path, summary: dict[str, Any], episodes: Sequence[Episode],
                       title: str, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """metrics.json, samples.jsonl, report.md, report.html and the two plots; returns the paths written."""
    paths = {name: out / name for name in ("metrics.json", "samples.jsonl", "report.md", "report.html",
                                           "accuracy.png", "edit_ratio.png")}
    records = write_eval_records(out, summary, episodes, extra)
    where = summary.get("split")
    with atomic_write(paths["report.md"]) as fh:
        fh.write(f"# {title}\n\n")
        if where:
            fh.write(f"Problems: {report.split_note(where, where.get('evaluated'))}.\n\n")
        fh.write(f"{report.format_table(summary)}\n")
        verification = report.format_self_verification(summary)
        if verification:
            fh.write(f"\n## Self-verification: does attempt t+1 know when attempt t was wrong?\n\n{verification}\n")
    plots.plot_accuracy_per_attempt(summary, paths["accuracy.png"], title=title)
    if summary.get("edit_histogram"):
        plots.plot_edit_histogram(summary, paths["edit_ratio.png"], title=f"{title}: edit distance ratio t1→t2")
    else:
        del paths["edit_ratio.png"]
    write_report(paths["report.html"], title, {title: summary}, records,
                 [paths[n] for n in ("accuracy.png", "edit_ratio.png") if n in paths],
                 notes=[f"{summary.get('n', len(records))} episodes of "
                        f"{report.split_note(where, where.get('evaluated'))}"] if where else
                 [f"{summary.get('n', len(records))} episodes; problems from {extra['task']}"]
                 if extra and extra.get("task") else [])
    return paths
