"""docs/results/raw.tar.xz: the raw per-run data restores, re-packs byte for byte, and regenerates the
committed reproduction tables byte-identical."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("results_data", ROOT / "scripts" / "results_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_raw_rule_keeps_what_the_docs_cite():
    data = _module()
    assert data.is_raw("repro/compare/score/seed-0/eval/report.md")           # a run's own files
    assert data.is_raw("repro/compare/score/seed-0/eval/samples.jsonl")
    assert data.is_raw("repro/compare/report.html") and not data.is_raw("repro/logs/chainA.log")
    assert data.is_raw("compare-arithmetic/score/eval/metrics.json")
    for kept in ("repro/findings.md", "repro/compare/table.json", "repro/compare/delta.png", "probe/first.json",
                 "testbed/cmp/table.md"):
        assert not data.is_raw(kept), kept
    tracked = subprocess.run(["git", "ls-files", "docs/results"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout:          # a git checkout: nothing raw is tracked
        assert not [p for p in tracked.stdout.split() if data.is_raw(p[len("docs/results/"):])]


@pytest.mark.long
def test_restored_data_repacks_byte_for_byte_and_regenerates_the_findings(tmp_path):
    data = _module()
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results,
                    ignore=lambda folder, names: [n for n in names if data.is_raw(
                        (Path(folder) / n).relative_to(ROOT / "docs" / "results").as_posix())
                        and (Path(folder) / n).is_file()])
    count = data.restore(results)
    assert count == len(data.members()) > 300
    assert (results / "repro" / "compare" / "score" / "seed-0" / "eval" / "samples.jsonl").is_file()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "findings.py"), str(results / "repro" / "compare"),
                           "--seeds", "0,1,2", "--out", str(tmp_path / "findings.md")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "findings.md").read_bytes() == (ROOT / "docs" / "results" / "repro" / "findings.md").read_bytes()
    archive = (results / "raw.tar.xz").read_bytes()
    assert data.pack(results) == count and (results / "raw.tar.xz").read_bytes() == archive
    assert not data.raw_files(results)
