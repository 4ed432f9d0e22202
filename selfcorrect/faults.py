"""Fault injection for the resume tests: a named point in the trainer sends this process a signal.

``SELFCORRECT_FAULT=POINT:N:SIGNAL[:RANK]`` (e.g. ``backward:3:TERM``) makes the N-th
pass through :func:`point` named ``POINT`` send ``SIGNAL`` (KILL, TERM or INT) to this
process (only to the process of that ``RANK`` in a multi-process launch, when given), so a test can interrupt a run at an exact place *inside* a step --
``rollout``, ``score``, ``backward``, ``optimizer``, ``save`` (mid-way through
writing a checkpoint) -- instead of at a random time.  Unset (always, outside
tests) a point costs one comparison.
"""

from __future__ import annotations

import os
import signal

ENV = "SELFCORRECT_FAULT"
POINTS = ("rollout", "score", "backward", "optimizer", "save")

_spec = os.environ.get(ENV, "")
_hits = 0


def point(name: str) -> None:
    """Pass a fault point (see the module docstring)."""
    global _hits
    if not _spec:
        return
    target, count, signame, *rank = _spec.split(":")
    if name != target or (rank and rank[0] != os.environ.get("RANK", "0")):
        return
    _hits += 1
    if _hits == int(count):
        os.kill(os.getpid(), getattr(signal, f"SIG{signame}"))
