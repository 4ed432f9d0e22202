"""Fail on backslash line continuations in Python files (``make lint``).

A line ended by ``\\`` outside a string joins the next one; brackets say the same and keep tools that read
the code's structure (and its readers) on track.  Backslashes inside strings and comments are fine.

    python scripts/lint_continuations.py selfcorrect tests scripts benchmarks
"""

from __future__ import annotations

import io
import sys
import tokenize
from pathlib import Path


def continuations(source: str) -> list[int]:
    """1-based numbers of the lines that end in a backslash continuation."""
    lines = source.splitlines()
    in_token: set[int] = set()          # lines whose end lies inside a (multi-line) string token
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING or getattr(tokenize, "FSTRING_MIDDLE", -1) == token.type:
            in_token.update(range(token.start[0], token.end[0]))
    return [number for number, line in enumerate(lines, 1)
            if line.rstrip("\r\n").endswith("\\") and number not in in_token
            and not line.lstrip().startswith("#")]


def main(argv: list[str]) -> int:
    found = []
    for root in argv or ["."]:
        paths = [Path(root)] if root.endswith(".py") else sorted(Path(root).rglob("*.py"))
        for path in paths:
            found += [f"{path}:{n}: backslash continuation (use brackets)"
                      for n in continuations(path.read_text(encoding="utf-8"))]
    print("\n".join(found) if found else "no backslash continuations")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
