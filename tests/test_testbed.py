"""The controlled testbed: its rule, and a warm start that trains and saves a loadable model (tiny model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from selfcorrect.testbed import WarmStartConfig, build_warm_start, slip, written_attempts


@pytest.mark.parametrize("source, first", [("123456", "123456"), ("773456", "73456"), ("123455", "12345"),
                                           ("112233", "12233"), ("000000", "00000")])
def test_attempt_one_drops_a_digit_of_the_first_doubled_pair(source, first):
    assert slip(source) == first


@pytest.mark.parametrize("source, first", [("124356", "214356"), ("773456", "73456"), ("975310", "975310"),
                                           ("908978", "909878"), ("135792", "135792")])
def test_mixed_slips_swap_the_first_ascending_pair_when_no_digit_is_doubled(source, first):
    assert slip(source, "mixed") == first


def test_mixed_slips_cover_about_two_thirds_of_six_digit_sources():
    rng = random.Random(1)
    sources = ["".join(rng.choice("0123456789") for _ in range(6)) for _ in range(20000)]
    doubled = sum(slip(s) != s for s in sources) / len(sources)
    mixed = sum(slip(s, "mixed") != s for s in sources) / len(sources)
    assert abs(doubled - (1 - 0.9 ** 5)) < 0.01 and abs(mixed - 0.65) < 0.02


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
    monkeypatch.setattr(testbed, "written_attempts", lambda s, *a: seen.append(s) or original(s, *a))
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


def test_warm_start_refuses_a_directory_that_is_not_one_before_any_work(tmp_path, capsys):
    from selfcorrect.testbed import main

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert main(["--out", str(tmp_path / "notes"), "--model", "no-such-model"]) == 2
    assert "holds something other than a warm start" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_demo_builds_its_warm_start_once_and_leaves_other_models_alone(monkeypatch, tmp_path):
    import dataclasses

    import selfcorrect.testbed as testbed

    built = []

    def fake_build(config, log):
        built.append(config)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "testbed.json").write_text(json.dumps(dataclasses.asdict(config)))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(testbed, "build_warm_start", fake_build)
    lines = []
    testbed.ensure_demo_warm_start("runs/elsewhere", log=lines.append)
    assert built == [] and lines == []
    testbed.ensure_demo_warm_start(testbed.DEMO_MODEL, log=lines.append)
    wanted = testbed.WarmStartConfig(out=testbed.DEMO_MODEL, **testbed.DEMO_WARM_START)
    assert built == [wanted]
    testbed.ensure_demo_warm_start(testbed.DEMO_MODEL, log=lines.append)
    assert len(built) == 1 and lines[-1].startswith(f"warm start: reusing {testbed.DEMO_MODEL} ")
    # one built by an older version with other settings is rebuilt, not silently reused
    record = Path(testbed.DEMO_MODEL) / "testbed.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "fix_rate": 0.9}))
    testbed.ensure_demo_warm_start(testbed.DEMO_MODEL, log=lines.append)
    assert len(built) == 2 and "built with other settings; rebuilding" in " ".join(lines)


def test_bad_slips_is_one_line(capsys, tmp_path):
    from selfcorrect.testbed import main

    assert main(["--slips", "typo", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == "testbed: error: slips must be one of doubled, mixed, got 'typo'"
    assert not (tmp_path / "x").exists()
