"""Writing and reading the files every run leaves: whole or not at all.

A result file appears only once fully written (:func:`atomic_write`: a hidden temporary file renamed into
place), so a crash or Ctrl-C mid-write never leaves a ``metrics.json`` that looks finished.  Every layer
that writes results (evaluation, training, compare, the probe, the HTML report) uses these.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Any]:
    """Open ``path`` for writing text; the file appears only once fully written."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (non-ASCII kept), atomically."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file such as ``samples.jsonl`` (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """One JSON object per line, atomically."""
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
