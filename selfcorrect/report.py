"""Presentation of the paper's metrics: the markdown table (reports, README) and its terminal twin.

The numbers come from :func:`selfcorrect.metrics.summarize`; this module only lays them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COLUMNS", "split_note", "SELF_VERIFICATION_COLUMNS", "format_self_verification", "format_table", "rich_table",
           "row_cells", "self_verification_rows"]


COLUMNS = ["Acc@t1", "Acc@t2", "Δ(t1,t2)", "Δ^{i→c}(t1,t2)", "Δ^{c→i}(t1,t2)", "Edit ratio", "Copy rate",
           "Format@t1", "Format@t2"]
"""The table's columns; ``Format@t`` is the share of attempts t that state the answer in the instructed form."""

SPLIT_COLUMNS = ["Answer corr.", "Form repairs"]
"""Inserted after Δ^{i→c} when the summaries split it (tasks with a lenient reader): wrong → right pairs whose
attempt 1 was wrong in every reading (the answer corrected) vs right outside the instructed form (only the
form repaired)."""


def _splits(rows: Sequence[tuple[Any, Mapping[str, Any]]]) -> bool:
    return any(s.get("answer_corrections") is not None for _, s in rows)


def columns(summary: Mapping[str, Any]) -> list[str]:
    """The columns of :func:`format_table` for ``summary`` (one summary or ``name -> summary``)."""
    _, rows = _rows(summary)
    return COLUMNS[:4] + SPLIT_COLUMNS + COLUMNS[4:] if _splits(rows) else list(COLUMNS)


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


def row_cells(summary: Mapping[str, Any], with_ci: bool = True, split: bool = False) -> list[str]:
    """One row's cells under :data:`COLUMNS` (``split``: with :data:`SPLIT_COLUMNS` after Δ^{i→c})."""
    acc = summary.get("accuracy") or []
    cis = summary.get("ci95") or {}
    acc_ci = cis.get("accuracy") or []
    fmt = summary.get("format_rate") or []
    fmt_ci = cis.get("format_rate") or []

    def at(seq: Sequence[Any], t: int) -> Any:
        return seq[t] if t < len(seq) else None

    return [
        _cell(at(acc, 0), at(acc_ci, 0), with_ci),
        _cell(at(acc, 1), at(acc_ci, 1), with_ci),
        _cell(summary.get("delta"), cis.get("delta"), with_ci),
        _cell(summary.get("delta_i2c"), cis.get("delta_i2c"), with_ci),
        *([_cell(summary.get("answer_corrections"), cis.get("answer_corrections"), with_ci),
           _cell(summary.get("form_repairs"), cis.get("form_repairs"), with_ci)] if split else []),
        _cell(summary.get("delta_c2i"), cis.get("delta_c2i"), with_ci),
        _cell(summary.get("edit_distance_ratio"), cis.get("edit_distance_ratio"), with_ci),
        _cell(summary.get("copy_rate"), cis.get("copy_rate"), with_ci),
        _cell(at(fmt, 0), at(fmt_ci, 0), with_ci),
        _cell(at(fmt, 1), at(fmt_ci, 1), with_ci),
    ]


def _rows(summary: Mapping[str, Any]) -> tuple[bool, list[tuple[str | None, Mapping[str, Any]]]]:
    """One summary, or a mapping name -> summary (several methods, one row each)."""
    if "accuracy" in summary and "attempts" in summary:
        return False, [(None, summary)]
    return True, [(str(name), s) for name, s in summary.items()]


def format_table(summary: Mapping[str, Any], with_ci: bool = True) -> str:
    """A markdown table in the style of the paper's Table 2.

    Columns: ``Acc@t1``, ``Acc@t2``, ``Δ(t1,t2)``, ``Δ^{i→c}(t1,t2)``,
    ``Δ^{c→i}(t1,t2)``, ``Edit ratio`` (mean edit distance ratio, 1 → 2),
    ``Copy rate`` and ``Format@t1``/``Format@t2`` (answers in the instructed form); where the summaries
    split Δ^{i→c} (a task with a lenient reader), ``Answer corr.`` and ``Form repairs`` follow it.  Values are percentages with one decimal, followed by the
    95% interval, e.g. ``52.6 [48.1, 57.0]``; missing values show ``–``.

    ``summary`` is one :func:`selfcorrect.metrics.summarize` result, or a mapping ``name ->
    summary`` to compare methods (one row each, with a leading ``Method``
    column).
    """
    named, rows = _rows(summary)
    split, names = _splits(rows), columns(summary)
    header = (["Method"] if named else []) + names
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * (1 if named else 0) + ["---:"] * len(names)) + "|",
    ]
    for name, s in rows:
        cells = ([name] if named else []) + row_cells(s, with_ci, split)
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
    for col in columns(summary):
        table.add_column(col, justify="right")
    for name, s in rows:
        table.add_row(*(([name] if named else []) + row_cells(s, with_ci, _splits(rows))))
    return table


SELF_VERIFICATION_COLUMNS = ["Edit (t wrong)", "Edit (t right)", "Answer change (t wrong)",
                             "Answer change (t right)", "Change precision", "Change recall"]
_SV_KEYS = ["edit_rate_wrong", "edit_rate_right", "answer_change_rate_wrong", "answer_change_rate_right",
            "change_precision", "change_recall"]


def self_verification_rows(summary: Mapping[str, Any], with_ci: bool = True) -> list[list[str]]:
    """Rows of :func:`format_self_verification`: ``[label, cell, ...]`` (one summary: a row per attempt
    pair; a mapping ``name -> summary``: a row per name, attempts 1 → 2)."""
    named, rows = _rows(summary)
    out = []
    for name, s in rows:
        pairs = s.get("self_verification") or []
        for sv in (pairs[:1] if named else pairs):
            cis = sv.get("ci95") or {}
            label = name if named else f"t{sv['from']} → t{sv['to']}"
            out.append([label] + [_cell(sv.get(k), cis.get(k), with_ci) for k in _SV_KEYS])
    return out


def format_self_verification(summary: Mapping[str, Any], with_ci: bool = True) -> str:
    """Does attempt t+1 know when attempt t was wrong?  A markdown table of
    :func:`selfcorrect.metrics.self_verification`'s rates (percentages with 95% intervals); empty
    when there are none (one attempt)."""
    rows = self_verification_rows(summary, with_ci)
    if not rows:
        return ""
    named = _rows(summary)[0]
    header = ["Method" if named else "Attempts"] + SELF_VERIFICATION_COLUMNS
    lines = ["| " + " | ".join(header) + " |", "|---|" + "|".join(["---:"] * len(SELF_VERIFICATION_COLUMNS)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)



def split_note(source: Mapping[str, Any], evaluated: int | None = None) -> str:
    """Where a number's problems come from, e.g. ``200 of the 500 test problems (task 'arithmetic', split
    test)`` -- from a run's ``splits`` record (:mod:`selfcorrect.tasks.splits`)."""
    total = source.get("problems")
    count = f"{evaluated} of the {total}" if evaluated is not None and evaluated != total else f"the {total}"
    return f"{count} {source.get('split', '')} problems ({source.get('source', '')})".replace("  ", " ")
