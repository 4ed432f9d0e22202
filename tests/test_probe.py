"""The correction-signal probe: its statistics on hand-counted fixtures, the command, and `train --probe`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from selfcorrect.cli import main
from selfcorrect.errors import ConfigError
from selfcorrect.probe import EpisodeOutcome, analyze, auroc, report_lines

# Two problems x three samples, counted by hand (attempt 1 -> attempt 2):
#   a1 answer correction (3 -> 5), a2 form repair (right number in the wrong form), a3 break,
#   b1 wrong -> another wrong answer, b2 copies a wrong answer, b3 stays right.
FIXTURE = [
    EpisodeOutcome("a", (0.0, 1.0), (0.0, 1.0), ("3", "5")),
    EpisodeOutcome("a", (0.0, 1.0), (1.0, 1.0), ("5", "5")),
    EpisodeOutcome("a", (1.0, 0.0), (1.0, 0.0), ("5", "4")),
    EpisodeOutcome("b", (0.0, 0.0), (0.0, 0.0), ("2", "9")),
    EpisodeOutcome("b", (0.0, 0.0), (0.0, 0.0), ("2", "2")),
    EpisodeOutcome("b", (1.0, 1.0), (1.0, 1.0), ("7", "7")),
]


def test_transitions_and_accuracies_by_hand():
    r = analyze(FIXTURE, budget=300)
    per = r["per_100"]
    assert per["answer_corrections"]["count"] == 1 and per["answer_corrections"]["value"] == pytest.approx(100 / 6)
    assert per["form_repairs"]["count"] == 1
    assert per["breaks"]["count"] == 1
    assert per["unchanged"]["count"] == 3 and per["unchanged"]["value"] == pytest.approx(50.0)
    assert r["accuracy"]["t1"]["value"] == pytest.approx(100 / 3)
    assert r["accuracy"]["t2"]["value"] == pytest.approx(50.0)
    assert r["accuracy_lenient"]["t1"]["value"] == pytest.approx(50.0)
    assert (r["episodes"], r["problems"], r["samples"]) == (6, 2, 3)


def test_anchoring_against_an_independent_resample_by_hand():
    an = analyze(FIXTURE, budget=300)["anchoring"]
    # wrong first attempts whose answer changed: a1 (right after) and b1 (wrong after); a2 changed only its form
    assert an["changed_wrong_right"]["n"] == 2 and an["changed_wrong_right"]["value"] == pytest.approx(0.5)
    # the other samples' first attempts: a1's are a2 (0), a3 (1); b1's are b2 (0), b3 (1)
    assert an["resample_right_same_episodes"]["value"] == pytest.approx(0.5)
    assert an["resample_right_wrong_first"]["n"] == 4


def test_self_consistency_detector_and_ceilings_by_hand():
    sc = analyze(FIXTURE, budget=300)["self_consistency"]
    # agreement with the other samples' first answers: a 0, .5, .5; b .5, .5, 0; right ones: a3 (.5), b3 (0)
    # AUROC: a3 beats a1, ties a2, b1, b2 (2.5); b3 ties a1 (0.5) -> 3 of 8 pairs
    assert sc["auroc"] == pytest.approx(3 / 8)
    # keep when >= half agree (a2, a3, b1, b2); re-answer a1 (+0.5) and b3 (0 - 1): -0.5 over 6 episodes
    assert sc["keep_share"] == pytest.approx(4 / 6)
    assert sc["policy_delta"]["value"] == pytest.approx(-50 / 6)
    # oracle: re-answer the four wrong first attempts, each at the others' success rate 0.5
    assert sc["oracle_delta"]["value"] == pytest.approx(100 / 3)


def test_rloo_variance_and_verdict():
    r = analyze(FIXTURE, budget=300)
    assert r["rloo_variance"] == {"t1": 1.0, "t2": 1.0}
    # 16.7 corrections per 100, but with two problems the bootstrap can draw b twice: the CI reaches 0
    assert not r["verdict"]["signal"] and r["verdict"]["failed"] == ["too few answer corrections"]
    assert r["verdict"]["expected_corrections"] == pytest.approx(50.0)
    assert "a run of 300 episodes samples about 50 answer corrections" in r["verdict"]["line"]
    # every problem correcting: the interval leaves 0 and the signal is there
    signal = analyze([dataclasses.replace(e, problem=p) for p in "abcdefgh" for e in FIXTURE[:3]], budget=300)
    assert signal["per_100"]["answer_corrections"]["ci95"][0] > 0
    assert signal["verdict"]["signal"], signal["verdict"]["line"]
    # the variance threshold alone can fail it
    flat = [EpisodeOutcome(p, (0.0, 1.0), (0.0, 1.0), ("1", "2")) for p in "abcd" for _ in range(2)]
    verdict = analyze(flat, budget=100)["verdict"]
    assert verdict["failed"] == ["too few attempt-2 groups with reward variance"]


def test_without_a_lenient_reader_every_fix_is_an_answer_correction():
    plain = [EpisodeOutcome(o.problem, o.rewards, None, o.answers) for o in FIXTURE]
    r = analyze(plain, budget=300)
    assert r["per_100"]["answer_corrections"]["count"] == 2 and r["per_100"]["form_repairs"]["count"] == 0
    assert r["accuracy_lenient"] is None
    assert any("no lenient reader" in line for line in report_lines(r))


def test_auroc_exact_values():
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == 0.5
    assert auroc(np.array([0.1, 0.2]), np.array([1, 1])) is None


def test_analyze_refuses_single_samples_and_ragged_episodes():
    with pytest.raises(ConfigError, match="at least 2 samples"):
        analyze([EpisodeOutcome("a", (0.0, 1.0)), EpisodeOutcome("b", (0.0, 1.0))], budget=1)
    with pytest.raises(ConfigError, match="same number"):
        analyze([EpisodeOutcome("a", (0.0, 1.0)), EpisodeOutcome("a", (0.0, 1.0, 1.0))], budget=1)


# --------------------------------------------------------------------------- the command (tiny random model)


def _probe(model_dir, out, *flags):
    return main(["probe", "--model", str(model_dir), "--task", "strings", "--probe-problems", "3", "--samples", "2",
                 "--max-new-tokens", "4", "--temperature", "1.0", "--autocast", "none", "--out", str(out), *flags])


def test_probe_command_writes_its_results(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    assert _probe(tiny_model_dir, out) == 0
    result = json.loads((out / "probe.json").read_text())
    assert (result["problems"], result["samples"], result["episodes"]) == (3, 2, 6)
    assert result["setting"]["task"] == "strings" and result["lenient_reader"]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["attempts"]) == 2 for r in rows)
    # the probed problems are training problems
    from selfcorrect.tasks import load_task

    train_ids = {p.id for p in load_task("strings", split="train").problems}
    assert {r["id"] for r in rows} <= train_ids
    printed = capsys.readouterr().err                     # the console writes to stderr, like eval's
    assert "probe: NO SIGNAL" in printed or "probe: SIGNAL" in printed
    assert f"wrote {out.resolve()}" in printed
    assert (out / "probe.md").read_text().startswith("# Probe:")


@pytest.mark.long
def test_probe_command_is_reproducible(tiny_model_dir, tmp_path):
    assert _probe(tiny_model_dir, tmp_path / "a") == 0
    assert _probe(tiny_model_dir, tmp_path / "b") == 0
    assert (tmp_path / "a" / "samples.jsonl").read_bytes() == (tmp_path / "b" / "samples.jsonl").read_bytes()


@pytest.mark.parametrize("flags, message", [
    (("--samples", "1", "--baseline", "none"), "samples must be >= 2"),
    (("--probe-min-variance", "2"), "probe_min_variance must be in [0, 1]"),
    (("--task-options", "operation=shuffle"), "operation must be one of"),
])
def test_probe_bad_input_is_one_line_and_writes_nothing(flags, message, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    assert _probe(tiny_model_dir, out, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


@pytest.mark.long
def test_train_with_probe_trains_exactly_as_without(tiny_model_dir, tmp_path, parity_task):
    from selfcorrect.cli import main as cli

    # the parity task gives the random model varied rewards, so the weights move and could differ
    common = ["train", "--model", str(tiny_model_dir), "--task", parity_task, "--iterations", "1",
              "--stage1-steps", "1", "--stage2-steps", "1", "--problems-per-step", "2", "--samples", "2",
              "--max-new-tokens", "4", "--eval-limit", "2", "--eval-max-new-tokens", "3", "--autocast", "none",
              "--report-to", "none", "--lr", "1e-3", "--probe-problems", "3"]
    assert cli([*common, "--out", str(tmp_path / "plain")]) == 0
    assert cli([*common, "--out", str(tmp_path / "probed"), "--probe", "true"]) == 0
    from safetensors.torch import load_file

    def weights(run):
        final = sorted(run.glob("checkpoint-*"))[-1]
        return load_file(str(final / "model.safetensors"))

    a, b = weights(tmp_path / "plain"), weights(tmp_path / "probed")
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], initial[k]) for k in a)          # training moved them
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    probed = tmp_path / "probed"
    assert json.loads((probed / "probe.json").read_text())["episodes"] == 6
    assert (probed / "probe-samples.jsonl").is_file() and not (tmp_path / "plain" / "probe.json").exists()
    assert "Correction signal before training" in (probed / "report.html").read_text()
    rows = [json.loads(line) for line in (probed / "metrics.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda row: {k: v for k, v in row.items() if not k.startswith("time") and k != "tokens_per_s"}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in plain]
