"""The controlled testbed: its rule, and a warm start that trains and saves a loadable model (tiny model)."""

from __future__ import annotations

import json
import random

import pytest

from selfcorrect.testbed import WarmStartConfig, build_warm_start, slip, written_attempts


@pytest.mark.parametrize("source, first", [("123456", "123456"), ("773456", "73456"), ("123455", "12345"),
                                           ("112233", "12233"), ("000000", "00000")])
def test_attempt_one_drops_a_digit_of_the_first_doubled_pair(source, first):
    assert slip(source) == first


def test_attempt_two_recopies_at_the_fix_rate_else_repeats_attempt_one():
    rng = random.Random(0)
    pairs = [written_attempts("773456", rng, 0.25) for _ in range(4000)]
    assert all(a == "The final answer is 73456." for a, _ in pairs)
    fixed = sum(b == "The final answer is 773456." for _, b in pairs) / len(pairs)
    assert abs(fixed - 0.25) < 0.03
    assert all(b in (a, "The final answer is 773456.") for a, b in pairs)
    assert written_attempts("123456", rng, 0.25) == ("The final answer is 123456.",) * 2   # right stays right


def test_warm_start_writes_a_model_from_training_problems_only(tiny_model_dir, tmp_path, monkeypatch):
    from selfcorrect.models import load_model
    from selfcorrect.tasks import load_task

    seen = []
    import selfcorrect.testbed as testbed

    original = testbed.written_attempts
    monkeypatch.setattr(testbed, "written_attempts", lambda s, r, f: seen.append(s) or original(s, r, f))
    out = build_warm_start(WarmStartConfig(model=str(tiny_model_dir), problems=12, steps=2, batch=4,
                                         out=str(tmp_path / "m")), log=lambda line: None)
    assert load_model(str(out), dtype="float32") is not None
    record = json.loads((out / "testbed.json").read_text())
    assert record["fix_rate"] == 0.4 and "doubled pair" in record["rule"]
    train = {p.meta["source"] for p in load_task("strings", operation="copy", length=6, split="train").problems}
    held_out = {p.meta["source"] for s in ("validation", "test")
                for p in load_task("strings", operation="copy", length=6, split=s).problems}
    assert len(seen) == 12 and set(seen) <= train and not set(seen) & held_out


def test_bad_fix_rate_is_one_line(capsys, tmp_path):
    from selfcorrect.testbed import main

    assert main(["--fix-rate", "2", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == "testbed: error: fix_rate must be in [0, 1], got 2.0"
