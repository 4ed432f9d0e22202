"""scripts/findings.py: the paper's findings decided by paired bootstrap intervals over problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest



@pytest.fixture(scope="module")
def findings(load_script):
    return load_script("findings")


def _run(root: Path, method: str, seed: int, rewards: list[tuple[int, int]]) -> None:
    path = root / method / f"seed-{seed}" / "eval"
    path.mkdir(parents=True)
    rows = [{"id": f"p{i}", "attempts": [{"reward": float(r1)}, {"reward": float(r2)}]}
            for i, (r1, r2) in enumerate(rewards)]
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_verdicts_follow_the_intervals(findings, tmp_path):
    n = 60
    _run(tmp_path, "score", 0, [(0, 1)] * 20 + [(0, 0)] * 40)             # fixes a third: Δ = +1/3
    _run(tmp_path, "single-turn", 0, [(1, 1)] * 30 + [(0, 0)] * 30)       # copies: Δ = 0 [0, 0]
    rows = {r["finding"][:3]: r for r in findings.findings(tmp_path, [0])}
    assert rows["(e)"]["verdict"] == "holds" and rows["(e)"]["evidence"] == "Δ_single-turn = +0.0 [+0.0, +0.0]"
    assert rows["(a)"]["verdict"] == "holds among the methods run"
    assert rows["(c)"]["verdict"] == "not measured"                       # stage2-only was not run
    mean, low, high = findings.difference(tmp_path, "score", "single-turn", [0])
    assert mean == pytest.approx(20 / n) and low > 0 < high
    _run(tmp_path, "no-shaping", 0, [(0, 1)] * 18 + [(0, 0)] * 42)        # almost as good as score
    rows = {r["finding"][:3]: r for r in findings.findings(tmp_path, [0])}
    assert rows["(d)"]["verdict"] == "inconclusive" and rows["(a)"]["verdict"] == "inconclusive"
    _run(tmp_path, "stage2-only", 0, [(0, 1)] * 40 + [(0, 0)] * 20)       # better than score: (a) and (c) fail
    rows = {r["finding"][:3]: r for r in findings.findings(tmp_path, [0])}
    assert rows["(c)"]["verdict"] == "does not hold" and rows["(a)"]["verdict"] == "does not hold"
