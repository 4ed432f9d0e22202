"""Presentation of the paper's metrics: the markdown table (reports, README) and its terminal twin.

The numbers come from :func:`selfcorrect.metrics.summarize`; this module only lays them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COLUMNS", "format_table", "rich_table", "row_cells"]


COLUMNS = ["Acc@t1", "Acc@t2", "Δ(t1,t2)", "Δ^{i→c}(t1,t2)", "Δ^{c→i}(t1,t2)", "Edit ratio", "Copy rate"]


def _pct(x: float | None) -> str | None:
    if x is None:
        return None
    s = f"{100.0 * x:.1f}"
    return "0.0" if s == "-0.0" else s


def _cell(value: float | None, ci: Sequence[float | None] | None, with_ci: bool = True) -> str:
    v = _pct(value)
    if v is None:
        return "–"
    if with_ci and ci is not None and ci[0] is not None and ci[1] is not None:
        return f"{v} [{_pct(ci[0])}, {_pct(ci[1])}]"
    return v


def row_cells(summary: Mapping[str, Any], with_ci: bool = True) -> list[str]:
    acc = summary.get("accuracy") or []
    cis = summary.get("ci95") or {}
    acc_ci = cis.get("accuracy") or []

    def at(seq: Sequence[Any], t: int) -> Any:
        return seq[t] if t < len(seq) else None

    return [
        _cell(at(acc, 0), at(acc_ci, 0), with_ci),
        _cell(at(acc, 1), at(acc_ci, 1), with_ci),
        _cell(summary.get("delta"), cis.get("delta"), with_ci),
        _cell(summary.get("delta_i2c"), cis.get("delta_i2c"), with_ci),
        _cell(summary.get("delta_c2i"), cis.get("delta_c2i"), with_ci),
        _cell(summary.get("edit_distance_ratio"), cis.get("edit_distance_ratio"), with_ci),
        _cell(summary.get("copy_rate"), cis.get("copy_rate"), with_ci),
    ]


def _rows(summary: Mapping[str, Any]) -> tuple[bool, list[tuple[str | None, Mapping[str, Any]]]]:
    """One summary, or a mapping name -> summary (several methods, one row each)."""
    if "accuracy" in summary and "attempts" in summary:
        return False, [(None, summary)]
    return True, [(str(name), s) for name, s in summary.items()]


def format_table(summary: Mapping[str, Any], with_ci: bool = True) -> str:
    """A markdown table in the style of the paper's Table 2.

    Columns: ``Acc@t1``, ``Acc@t2``, ``Δ(t1,t2)``, ``Δ^{i→c}(t1,t2)``,
    ``Δ^{c→i}(t1,t2)``, ``Edit ratio`` (mean edit distance ratio, 1 → 2) and
    ``Copy rate``.  Values are percentages with one decimal, followed by the
    95% interval, e.g. ``52.6 [48.1, 57.0]``; missing values show ``–``.

    ``summary`` is one :func:`selfcorrect.metrics.summarize` result, or a mapping ``name ->
    summary`` to compare methods (one row each, with a leading ``Method``
    column).
    """
    named, rows = _rows(summary)
    header = (["Method"] if named else []) + COLUMNS
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * (1 if named else 0) + ["---:"] * len(COLUMNS)) + "|",
    ]
    for name, s in rows:
        cells = ([name] if named else []) + row_cells(s, with_ci)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def rich_table(summary: Mapping[str, Any], title: str | None = "Self-correction metrics", with_ci: bool = True):
    """The :func:`format_table` content as a ``rich.table.Table`` for terminal display.

    Accepts one summary or a mapping ``name -> summary`` like :func:`format_table`.
    """
    from rich.table import Table

    named, rows = _rows(summary)
    table = Table(title=title)
    if named:
        table.add_column("Method", justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for name, s in rows:
        table.add_row(*(([name] if named else []) + row_cells(s, with_ci)))
    return table
