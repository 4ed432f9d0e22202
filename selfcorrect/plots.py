"""PNG plots of self-correction metrics (matplotlib, no pyplot, no global backend).

Figures are built with :class:`matplotlib.figure.Figure` directly, which needs
no GUI backend and leaves matplotlib's global state (``pyplot``, the selected
backend, rcParams) untouched; ``Figure.savefig`` renders PNGs with Agg.

Every function writes one PNG (creating parent directories) and returns its
path as a string.  Inputs are the dicts produced by
:func:`selfcorrect.metrics.summarize` / :func:`selfcorrect.metrics.edit_stats`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "plot_edit_histogram",
    "plot_edit_histograms",
    "plot_accuracy_per_attempt",
    "plot_scaling",
]


def _whole_numbers():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | os.PathLike[str]) -> str:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # "tight": the saved image grows to hold every title and label rather than clipping one that is
    # wider than the axes (a long model name in a title, a Δ label above the top bar).
    fig.savefig(p, format="png", bbox_inches="tight", pad_inches=0.1)
    return str(p)


def _hist_of(obj: Mapping[str, Any]) -> tuple[list[int], list[float], dict[str, Any]]:
    """Find ``(counts, bin_edges, extras)`` in a summary, an edit_stats dict or a bare histogram."""
    extras: dict[str, Any] = {}
    hist: Any = obj
    if "edit_histogram" in obj:  # summarize() output
        hist = obj["edit_histogram"]
        extras = {"mean": obj.get("edit_distance_ratio"), "copy_rate": obj.get("copy_rate")}
    elif "histogram" in obj:  # edit_stats() output
        hist = obj["histogram"]
        extras = {"mean": obj.get("mean"), "copy_rate": obj.get("copy_rate")}
    if not isinstance(hist, Mapping) or "counts" not in hist or "bin_edges" not in hist:
        raise ValueError(
            "no edit-distance histogram to plot (summarize() needs texts and at least 2 attempts)"
        )
    counts = [int(c) for c in hist["counts"]]
    edges = [float(e) for e in hist["bin_edges"]]
    if len(edges) != len(counts) + 1:
        raise ValueError(f"histogram has {len(counts)} counts but {len(edges)} bin edges")
    return counts, edges, extras


def _draw_hist(ax, counts: list[int], edges: list[float], extras: Mapping[str, Any], color: str) -> None:
    total = sum(counts)
    fracs = [c / total if total else 0.0 for c in counts]
    widths = [edges[b + 1] - edges[b] for b in range(len(counts))]
    ax.bar(edges[:-1], fracs, width=widths, align="edge", color=color, edgecolor="white", alpha=0.85)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("edit distance ratio (attempt 1 → 2)")
    notes = []
    if extras.get("mean") is not None:
        notes.append(f"mean {extras['mean']:.3f}")
    if extras.get("copy_rate") is not None:
        notes.append(f"copies {100 * extras['copy_rate']:.1f}%")
    notes.append(f"n = {total}")
    ax.text(0.98, 0.97, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=9)


def _error_bars(values: Sequence[float], cis: Sequence[Any]) -> tuple[list[float], list[float]]:
    """Matplotlib ``yerr`` (below, above) for percentage ``values`` and fractional ``[low, high]`` CIs (None: no bar)."""
    lower, upper = [], []
    for y, ci in zip(values, cis):
        if ci is None or ci[0] is None or ci[1] is None:
            lower.append(0.0)
            upper.append(0.0)
        else:
            lower.append(max(0.0, y - 100.0 * ci[0]))
            upper.append(max(0.0, 100.0 * ci[1] - y))
    return lower, upper


def plot_edit_histogram(
    summary_or_hist: Mapping[str, Any],
    path: str | os.PathLike[str],
    title: str = "Edit distance ratio between attempts",
) -> str:
    """Histogram (fraction of episodes per bin) of the edit distance ratio, attempt 1 → 2.

    ``summary_or_hist`` may be a :func:`~selfcorrect.metrics.summarize` result
    (uses ``edit_histogram``), an :func:`~selfcorrect.metrics.edit_stats`
    result, or a bare ``{"counts", "bin_edges"}`` dict.
    """
    counts, edges, extras = _hist_of(summary_or_hist)
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    _draw_hist(ax, counts, edges, extras, "C0")
    ax.set_ylabel("fraction of episodes")
    ax.set_title(title, wrap=True)
    return _save(fig, path)


def plot_edit_histograms(
    summaries: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str = "Edit distance ratio between attempts",
) -> str:
    """Edit-distance histograms of several methods side by side (small multiples, shared axes).

    ``summaries`` maps a method name to anything :func:`plot_edit_histogram`
    accepts.  Panels share both axes, so the shapes compare directly.
    """
    if not summaries:
        raise ValueError("plot_edit_histograms needs at least one summary")
    items = [(str(name), _hist_of(s)) for name, s in summaries.items()]
    m = len(items)
    ncols = min(m, 4)
    nrows = math.ceil(m / ncols)
    fig = _figure(3.6 * ncols, 3.0 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for idx, (name, (counts, edges, extras)) in enumerate(items):
        ax = axes[idx // ncols][idx % ncols]
        _draw_hist(ax, counts, edges, extras, f"C{idx % 10}")
        ax.set_title(name, wrap=True)
        if idx % ncols == 0:
            ax.set_ylabel("fraction of episodes")
        if idx // ncols != nrows - 1:
            ax.set_xlabel("")
    for idx in range(m, nrows * ncols):
        axes[idx // ncols][idx % ncols].set_visible(False)
    fig.suptitle(title, wrap=True)
    return _save(fig, path)


def plot_accuracy_per_attempt(
    summary: Mapping[str, Any],
    path: str | os.PathLike[str],
    title: str = "Accuracy per attempt",
) -> str:
    """Bar chart of ``Accuracy@t`` (percent) per attempt with 95% CI error bars."""
    acc = summary.get("accuracy")
    if not acc:
        raise ValueError("summary has no 'accuracy' to plot")
    cis = (summary.get("ci95") or {}).get("accuracy") or [None] * len(acc)
    xs = list(range(1, len(acc) + 1))
    ys = [100.0 * a for a in acc]
    lower, upper = _error_bars(ys, cis)
    fig = _figure(max(4.0, 1.2 * len(acc) + 2.0), 4.0)
    ax = fig.add_subplot()
    ax.bar(xs, ys, yerr=[lower, upper], capsize=6, color="C0", alpha=0.85)
    for x, y, up in zip(xs, ys, upper):
        ax.text(x, y + up + 1.0, f"{y:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(xs, [f"t{x}" for x in xs])
    ax.set_xlabel("attempt")
    ax.set_ylabel("accuracy (%)")
    top = max(y + u for y, u in zip(ys, upper))
    ax.set_ylim(0.0, min(100.0, top + 10.0) if top < 95.0 else 105.0)
    subtitle = ""
    if summary.get("delta") is not None:
        subtitle = f"  (Δ(t1,t2) = {100.0 * summary['delta']:+.1f})"
    ax.set_title(title + subtitle, wrap=True)
    return _save(fig, path)


_ROW_KEYS = {
    "budget": ("budget", "samples", "n"),
    "parallel": ("parallel", "parallel_acc", "parallel_accuracy"),
    "parallel_ci": ("parallel_ci", "parallel_ci95"),
    "sequential": ("sequential", "sequential_acc", "sequential_accuracy"),
    "sequential_ci": ("sequential_ci", "sequential_ci95"),
}


def _scaling_row(row: Any) -> dict[str, Any]:
    if isinstance(row, Mapping):
        out = {}
        for key, names in _ROW_KEYS.items():
            out[key] = next((row[nm] for nm in names if nm in row), None)
        return out
    if isinstance(row, Sequence) and len(row) == 5:
        return dict(zip(_ROW_KEYS, row))
    raise ValueError(
        "each scaling row must be a dict with budget/parallel/parallel_ci/sequential/sequential_ci "
        "or a 5-tuple (budget, parallel_acc, parallel_ci, sequential_acc, sequential_ci)"
    )


def plot_scaling(
    table: Sequence[Any],
    path: str | os.PathLike[str],
    title: str = "Accuracy vs. inference budget",
) -> str:
    """Accuracy (percent) against sample budget: parallel sampling vs. sequential self-correction.

    ``table`` is a list of rows, each either a dict ``{"budget": B,
    "parallel": acc, "parallel_ci": [low, high], "sequential": acc,
    "sequential_ci": [low, high]}`` (``parallel_acc`` / ``sequential_acc``
    are accepted aliases) or a 5-tuple in that order.  Accuracies are
    fractions; any value or CI may be ``None`` (that point / band is skipped).
    Each curve gets a shaded CI band.  The x axis is log2 when budgets span
    a factor of 4 or more.
    """
    rows = sorted((_scaling_row(r) for r in table), key=lambda r: float(r["budget"]))
    if not rows:
        raise ValueError("plot_scaling needs at least one row")
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for key, label, color, marker in (
        ("parallel", "parallel samples (majority vote)", "C0", "o"),
        ("sequential", "sequential self-correction", "C1", "s"),
    ):
        pts = [(float(r["budget"]), r[key], r[f"{key}_ci"]) for r in rows if r[key] is not None]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ax.plot(xs, [100.0 * p[1] for p in pts], marker=marker, color=color, label=label)
        band = [(p[0], p[2]) for p in pts if p[2] is not None and None not in p[2]]
        if band:
            ax.fill_between(
                [b[0] for b in band],
                [100.0 * b[1][0] for b in band],
                [100.0 * b[1][1] for b in band],
                color=color,
                alpha=0.2,
                linewidth=0,
            )
    budgets = [float(r["budget"]) for r in rows]
    if min(budgets) > 0 and max(budgets) / min(budgets) >= 4:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.set_xlabel("budget (samples / attempts)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, wrap=True)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")                   # wherever it hides the fewest points
    return _save(fig, path)


def plot_training_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                         title: str = "Training") -> str:
    """Four panels over steps: reward per attempt, Δ / i→c / c→i, KL per attempt, edit ratio and copy rate.

    ``rows`` are ``metrics.jsonl`` records (``step`` plus ``reward_t1``, ``kl_t1``, ``delta``, ...);
    a stage change is marked by a dotted vertical line.
    """
    steps = [r["step"] for r in rows]
    fig = _figure(11.0, 7.0)
    axes = fig.subplots(2, 2).ravel()
    keys = list(dict.fromkeys(k for r in rows for k in r))       # every column, first seen first
    panels = [
        ("reward and accuracy", [k for k in keys if k.startswith(("reward_t", "validation_acc_t", "test_acc_t"))]),
        ("transitions", [k for k in ("delta", "delta_i2c", "delta_c2i") if k in keys]),
        ("KL per attempt", [k for k in keys if k.startswith("kl_t")]),
        ("collapse signal", [k for k in ("edit_distance_ratio", "copy_rate") if k in keys]),
    ]
    for ax, (name, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, marker="." if len(pts) < 30 else None)
        for prev, cur in zip(rows, rows[1:]):
            if prev.get("stage") != cur.get("stage") or prev.get("iteration") != cur.get("iteration"):
                ax.axvline(cur["step"] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(name, wrap=True)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(_whole_numbers())               # steps are whole numbers
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if steps:
        fig.suptitle(f"{title} ({len(steps)} steps; dotted lines: stage changes)", wrap=True)
    return _save(fig, path)


def plot_method_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike[str],
                       title: str = "Training reward per method") -> str:
    """Training reward at attempt 1 (dashed) and attempt 2 (solid) against step, one colour per method.

    ``curves`` maps a method to ``{"step": [...], "reward_t1": [...], "reward_t2": [...]}``.
    """
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    for idx, (name, c) in enumerate(curves.items()):
        color = f"C{idx % 10}"
        if "reward_t1" in c:
            ax.plot(c["step"], c["reward_t1"], color=color, linestyle="--", alpha=0.8)
        if "reward_t2" in c and not all(math.isnan(v) for v in c["reward_t2"]):
            ax.plot(c["step"], c["reward_t2"], color=color, label=name)
        else:
            ax.plot([], [], color=color, label=f"{name} (t1 only)")
    ax.set_xlabel("step")
    ax.set_ylabel("training reward")
    ax.set_title(f"{title} (dashed: attempt 1, solid: attempt 2)", wrap=True)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_delta_bars(summaries: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str],
                    title: str = "Self-correction gain Δ(t1, t2) per method") -> str:
    """Bar chart of Δ(t1, t2) (percentage points) per method with 95% CI error bars."""
    names = list(summaries)
    deltas = [100.0 * (summaries[n].get("delta") or 0.0) for n in names]
    lower, upper = _error_bars(deltas, [(summaries[n].get("ci95") or {}).get("delta") for n in names])
    fig = _figure(max(5.0, 1.1 * len(names) + 2.0), 4.0)
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    ax.bar(xs, deltas, yerr=[lower, upper], capsize=5, color=[f"C{i % 10}" for i in xs], alpha=0.85)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(xs, names, rotation=20, ha="right")
    ax.set_ylabel("Δ(t1, t2) (points)")
    ax.set_title(title, wrap=True)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
