"""scripts/budget_curve.py: accuracy per attempt against sampled episodes, pooled over seeds, and the
paired gap between SCoRe's last attempt and single-turn RL's best attempt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

N = 40


@pytest.fixture(scope="module")
def curve(load_script):
    return load_script("budget_curve")


def _records(right_t1: int, right_t2: int) -> list[dict]:
    """N problems; the first right_t1 (right_t2) are right at attempt 1 (2)."""
    def attempt(right: bool) -> dict:
        return {"reward": float(right), "text": "The final answer is 1.", "answer": "1", "truncated": False,
                "tokens": 6, "formatted": True}
    return [{"id": f"p{i}", "attempts": [attempt(i < right_t1), attempt(i < right_t2)]} for i in range(N)]


def _run(root: Path, method: str, seed: int, points: dict[int, tuple[int, int]], final: int) -> None:
    path = root / method / f"seed-{seed}"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"method: {method}\nproblems_per_step: 4\nsamples: 2\n")
    for step, (a, b) in points.items():
        where = path / ("eval" if step == final else f"test-evals/step-{step}")
        where.mkdir(parents=True)
        (where / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(a, b)))
        if step == final:
            (where / "metrics.json").write_text(json.dumps({"step": step}))


def test_points_pool_seeds_and_gap_is_paired_by_problem(curve, tmp_path, capsys):
    _run(tmp_path, "score", 0, {5: (10, 20), 10: (12, 24)}, final=10)
    _run(tmp_path, "score", 1, {5: (10, 10), 10: (16, 24)}, final=10)
    _run(tmp_path, "single-turn", 0, {5: (30, 25), 10: (8, 20)}, final=10)
    _run(tmp_path, "single-turn", 1, {10: (8, 20)}, final=10)          # seed 1 has no step-5 evaluation
    score, score_rows = curve.method_curve(tmp_path, "score", [0, 1])
    assert [(p["step"], p["episodes"]) for p in score] == [(5, 40), (10, 80)]
    assert score[0]["accuracy"] == [pytest.approx(20 / 80), pytest.approx(30 / 80)]
    assert score[1]["delta"] == pytest.approx((48 - 28) / 80)
    single, single_rows = curve.method_curve(tmp_path, "single-turn", [0, 1])
    assert [p["step"] for p in single] == [10]                          # only steps every seed reached
    assert "single-turn: steps 5 left out (not every seed has them)" in capsys.readouterr().err
    g = curve.gap(score_rows[10], single_rows[10], single[0]["accuracy"])
    assert g["against_attempt"] == 2                                    # single-turn's better attempt at step 10
    # score t2: p0..p23 right in both seeds; single-turn t2: p0..p19 right in both -> +4 problems of 40
    assert g["difference"] == pytest.approx(4 / N) and g["ci"][0] > 0 and g["problems"] == N


def test_writes_table_json_and_plot_and_refuses_a_missing_run(curve, tmp_path, capsys):
    for seed in (0, 1):
        _run(tmp_path, "score", seed, {5: (10, 20), 10: (12, 24)}, final=10)
        _run(tmp_path, "single-turn", seed, {5: (30, 25), 10: (8, 20)}, final=10)
    base = tmp_path / "base"
    base.mkdir()
    (base / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(2, 2)))
    out = tmp_path / "out"
    assert curve.main([str(tmp_path), "--seeds", "0,1", "--base", str(base), "--out", str(out)]) == 0
    table = (out / "curve.md").read_text()
    assert "| score | 0 | 0 | 5.0 [" in table and "| score | 5 | 40 | 25.0 [" in table
    # step 5: score t2 20/40 vs single-turn's better attempt t1 30/40; step 10: 24/40 vs t2 20/40
    assert "| 5 | 40 | t1 | -25.0 [" in table and "| 10 | 80 | t2 | +10.0 [" in table
    data = json.loads((out / "curve.json").read_text())
    assert [p["step"] for p in data["curves"]["single-turn"]] == [0, 5, 10]
    assert [g["step"] for g in data["gaps"]] == [5, 10]                  # not the base model against itself
    assert (out / "curve.png").stat().st_size > 0
    capsys.readouterr()
    refused = {("--seeds", "0,2"): "no finished run (eval/metrics.json) in ",
               ("--seeds", "0,1", "--base", str(tmp_path / "nobase")): "no base evaluation: ",
               ("--seeds", "0,1", "--methods", "score"): "--against single-turn is not one of the methods"}
    (tmp_path / "score" / "seed-2" / "test-evals" / "step-5").mkdir(parents=True)   # started, not finished
    for argv, message in refused.items():
        assert curve.main([str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
    assert curve.main([str(tmp_path), "--seeds", "0,1", "--methods", "single-turn", "--against", "none"]) == 0
    assert "best attempt" not in capsys.readouterr().out                # one method: no comparison table
