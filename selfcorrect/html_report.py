"""``report.html``: one self-contained page per evaluation, training run or comparison.

It holds the paper-style table with 95% CIs (the same cells as ``report.md``), the run's plots
inlined as PNG data, and a **sample browser**: every episode's attempts side by side, a
word-level diff between consecutive attempts (``difflib``), filters (wrong→right, right→wrong,
copied, edited, unparsable) and a search over problem ids and texts.  No server, no network:
the page is one file that opens from disk.

Everything in an attempt is model-written, so it is hostile: the page never parses it as HTML.
The data travels as JSON inside a ``<script type="application/json">`` element (Jinja2's
``tojson`` escapes ``<``, ``>`` and ``&``), and the browser script inserts it with
``textContent`` only.
"""

from __future__ import annotations

import base64
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import report
from .files import atomic_write

TEMPLATE = "report.html.j2"
FILTERS = {"all": "all", "wrong-right": "wrong → right", "right-wrong": "right → wrong", "copied": "copied",
           "edited": "edited", "unparsable": "unparsable"}
"""The browser's filters: key (also the ``#filter=`` value of the page's address) → label."""

_TOKEN = re.compile(r"\S+\s*|\s+")   # a word with the space after it: spaces never match alone


def word_diff(before: str, after: str) -> list[list[str]]:
    """``[[op, text], ...]`` turning ``before`` into ``after`` word by word; op is ``=``, ``-`` or ``+``."""
    a, b = _TOKEN.findall(before), _TOKEN.findall(after)
    out: list[list[str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(["=", "".join(a[i1:i2])])
            continue
        if i2 > i1:
            out.append(["-", "".join(a[i1:i2])])
        if j2 > j1:
            out.append(["+", "".join(b[j1:j2])])
    return out


def episode_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """A ``samples.jsonl`` record as the browser shows it: attempts, diffs, and its filter tags."""
    attempts = list(record.get("attempts") or [])
    right = [bool(a.get("reward")) for a in attempts]
    tags = set()
    for k in range(1, len(attempts)):
        if not right[k - 1] and right[k]:
            tags.add("wrong-right")
        if right[k - 1] and not right[k]:
            tags.add("right-wrong")
        tags.add("copied" if attempts[k].get("text") == attempts[k - 1].get("text") else "edited")
    if any(a.get("answer") is None for a in attempts):
        tags.add("unparsable")
    return {
        "id": str(record.get("id")), "sample": record.get("sample", 0), "group": record.get("group", ""),
        "question": record.get("question") or "", "gold": record.get("gold"),
        "attempts": [{"text": a.get("text", ""), "answer": a.get("answer"), "reward": a.get("reward"),
                      "reason": a.get("reason", ""), "truncated": bool(a.get("truncated"))} for a in attempts],
        "diffs": [word_diff(attempts[k - 1].get("text", ""), attempts[k].get("text", ""))
                  for k in range(1, len(attempts))],
        "tags": sorted(tags),
    }


def table(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The paper's table (``report.md``'s cells): ``{"columns": [...], "rows": [[name, cell, ...], ...]}``."""
    split = any(s.get("answer_corrections") is not None for s in summaries.values())
    return {"columns": ["Method", *report.columns(dict(summaries))] if summaries else ["Method", *report.COLUMNS],
            "rows": [[name, *report.row_cells(s, split=split)] for name, s in summaries.items()],
            "n": {name: s.get("n") for name, s in summaries.items()},
            "verification_columns": ["Method", *report.SELF_VERIFICATION_COLUMNS],
            "verification": report.self_verification_rows(dict(summaries))}


def _image(path: Path) -> dict[str, str]:
    return {"name": path.name, "data": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()}


def render(title: str, summaries: Mapping[str, Mapping[str, Any]], samples: Iterable[Mapping[str, Any]],
           images: Sequence[Path] = (), notes: Sequence[str] = (), probe: Sequence[str] = ()) -> str:
    """The page as a string (see the module docstring); ``images`` that do not exist are left out; ``probe``:
    the lines of the run's correction-signal probe (:func:`selfcorrect.probe.report_lines`), if it ran."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("selfcorrect", "templates"), autoescape=select_autoescape(["html", "j2"]))
    episodes = [episode_view(r) for r in samples]
    counts = {key: sum(key == "all" or key in e["tags"] for e in episodes) for key in FILTERS}
    return env.get_template(TEMPLATE).render(
        title=title, table=table(summaries), images=[_image(p) for p in images if Path(p).is_file()],
        notes=list(notes), probe=list(probe), episodes=episodes, filters=FILTERS, counts=counts,
        groups=sorted({e["group"] for e in episodes if e["group"]}))


def write_report(path: Path, title: str, summaries: Mapping[str, Mapping[str, Any]],
                 samples: Iterable[Mapping[str, Any]], images: Sequence[Path] = (),
                 notes: Sequence[str] = (), probe: Sequence[str] = ()) -> Path:
    """Write :func:`render`'s page to ``path`` (atomically) and return it."""
    page = render(title, summaries, samples, images, notes, probe)
    with atomic_write(Path(path)) as fh:
        fh.write(page)
    return Path(path)
