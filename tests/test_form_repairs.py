"""scripts/form_repairs.py: a wrong→right pair is a form repair when attempt 1 already held the right number."""

from __future__ import annotations

import json
from pathlib import Path


def _eval(root: Path, method: str, seed: int, pairs: list[tuple[str, float, str, float]]) -> None:
    path = root / method / f"seed-{seed}" / "eval"
    path.mkdir(parents=True)
    rows = [{"id": f"p{i}", "gold": "45", "attempts": [{"text": t1, "reward": r1}, {"text": t2, "reward": r2}]}
            for i, (t1, r1, t2, r2) in enumerate(pairs)]
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_splits_wrong_to_right_into_form_repairs_and_answer_corrections(load_script, tmp_path, capsys):
    script = load_script("form_repairs")
    right = "The final answer is 45."
    _eval(tmp_path, "m", 0, [("43 + 2 = 45.", 0.0, right, 1.0),            # form repair: 45 was there
                             ("The final answer is 44.", 0.0, right, 1.0),  # answer correction
                             (right, 1.0, right, 1.0),                      # not wrong→right
                             ("The answer is 45, or 46.", 0.0, right, 1.0)])  # last number 46: a correction
    _eval(tmp_path, "m", 1, [("45", 0.0, right, 1.0), ("no idea", 0.0, "no idea", 0.0)])
    _eval(tmp_path, "gap", 0, [("45", 0.0, right, 1.0)])                   # seed 1 missing: left out, named
    assert script.main([str(tmp_path), "--seeds", "0,1", "--out", str(tmp_path / "o")]) == 0
    data = json.loads((tmp_path / "o" / "form_repairs.json").read_text())
    assert data["methods"] == {"m": {"episodes": 6, "i2c": 4, "form_repairs": 2, "answer_corrections": 2}}
    assert data["missing"] == ["gap"]
    assert "| m | 6 | 4 | 2 | 2 |" in (tmp_path / "o" / "form_repairs.md").read_text()
    capsys.readouterr()
    assert script.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"form_repairs: no directory {tmp_path / 'nowhere'}"
