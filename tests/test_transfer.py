"""scripts/transfer.py: word-phrased test accuracy pooled over seeds, beside the digit-phrased table."""

from __future__ import annotations

import json
from pathlib import Path



def _eval(root: Path, method: str, seed: int, right: int, n: int = 20) -> None:
    path = root / method / f"seed-{seed}" / "eval"
    path.mkdir(parents=True)
    attempt = lambda ok: {"reward": float(ok), "text": "The final answer is 3.", "answer": "3", "truncated": False,
                          "tokens": 6, "formatted": True}
    rows = [{"id": f"p{i}", "attempts": [attempt(i < right), attempt(i < right)]} for i in range(n)]
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pools_seeds_names_the_missing_and_sets_digits_beside_words(load_script, tmp_path, capsys):
    transfer = load_script("transfer")
    words, digits = tmp_path / "transfer", tmp_path / "compare"
    _eval(words, "base", 0, 1)
    _eval(words, "score", 0, 2)
    _eval(words, "score", 1, 4)                        # pooled: 6 of 40 = 15.0
    _eval(words, "star", 0, 5)                         # seed 1 missing: left out, named
    _eval(digits, "score", 0, 10)
    _eval(digits, "score", 1, 10)
    assert transfer.main([str(words), "--digits", str(digits), "--seeds", "0,1", "--out", str(tmp_path / "o")]) == 0
    text = (tmp_path / "o" / "transfer.md").read_text()
    assert "| base | 5.0 [" in text and "| score | 15.0 [" in text
    assert "| score | 50.0 [" in text and "Not evaluated at every seed (left out): star." in text
    data = json.loads((tmp_path / "o" / "transfer.json").read_text())
    assert set(data["words"]) == {"base", "score"} and data["words"]["score"]["n"] == 40
    assert transfer.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"transfer: no directory {tmp_path / 'nowhere'}"
