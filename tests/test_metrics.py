"""Tests for selfcorrect.metrics and selfcorrect.plots (hand-computed expectations)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from selfcorrect.errors import SelfCorrectError
from selfcorrect.metrics import (
    accuracy_per_attempt,
    bootstrap_interval,
    edit_distance_ratio,
    edit_stats,
    majority_vote,
    summarize,
    transition_rates,
    wilson_interval,
)
from selfcorrect.report import format_table, rich_table, row_cells

BALANCED = [[0, 1], [1, 0], [1, 1], [0, 0]]  # one fixed, one broken, one kept right, one kept wrong


# --------------------------------------------------------------------------- accuracy / transitions


def test_balanced_example():
    assert accuracy_per_attempt(BALANCED) == [0.5, 0.5]
    tr = transition_rates(BALANCED, 0, 1)
    assert tr["i2c"] == 0.25
    assert tr["c2i"] == 0.25
    assert tr["delta"] == 0.0
    assert tr["i2c_count"] == 1 and tr["c2i_count"] == 1
    assert tr["acc_i"] == 0.5 and tr["acc_j"] == 0.5


def test_improving_example():
    r = np.array([[0, 1], [0, 1], [1, 1], [1, 0], [0, 0]])  # acc 2/5 -> 3/5
    assert accuracy_per_attempt(r) == [0.4, 0.6]
    tr = transition_rates(r, 0, 1)
    assert tr["i2c"] == 0.4  # 2 of 5 fixed
    assert tr["c2i"] == 0.2  # 1 of 5 broken
    assert tr["delta"] == pytest.approx(0.2)
    # reverse direction swaps the roles
    back = transition_rates(r, 1, 0)
    assert back["i2c"] == 0.2 and back["c2i"] == 0.4
    assert back["delta"] == pytest.approx(-0.2)


def test_negative_indices_and_bools():
    r = np.array([[False, True, True], [True, True, False]])
    tr = transition_rates(r, 0, -1)
    assert (tr["i"], tr["j"]) == (0, 2)
    assert tr["i2c"] == 0.5 and tr["c2i"] == 0.5


def test_delta_identity_exact_on_random_inputs():
    rng = np.random.default_rng(1234)
    for _ in range(300):
        n = int(rng.integers(1, 200))
        k = int(rng.integers(2, 5))
        r = rng.integers(0, 2, size=(n, k))
        for i in range(k):
            for j in range(k):
                tr = transition_rates(r, i, j)
                assert tr["delta"] == tr["i2c"] - tr["c2i"]  # bit-exact by construction
                # integer identity: fixed - broken == change in #correct
                assert tr["i2c_count"] - tr["c2i_count"] == int(r[:, j].sum()) - int(r[:, i].sum())
                assert abs(tr["delta"] - (tr["acc_j"] - tr["acc_i"])) <= 1e-15
        s = summarize(r, n_boot=10)
        assert s["delta"] == s["delta_i2c"] - s["delta_c2i"]
        for p in s["pairs"]:
            assert p["delta"] == p["delta_i2c"] - p["delta_c2i"]


def test_delta_identity_where_naive_division_is_inexact():
    # 3/10 - 1/10 != 2/10 in floating point; delta must still equal i2c - c2i exactly.
    r = np.array([[0, 1]] * 3 + [[1, 0]] * 1 + [[0, 0]] * 6)
    tr = transition_rates(r, 0, 1)
    assert tr["i2c"] == 0.3 and tr["c2i"] == 0.1
    assert tr["delta"] == tr["i2c"] - tr["c2i"]
    assert tr["delta"] == pytest.approx(0.2)


def test_rewards_validation():
    with pytest.raises(SelfCorrectError, match="binary"):
        accuracy_per_attempt([[0, 0.5]])
    with pytest.raises(SelfCorrectError, match="2-D"):
        accuracy_per_attempt([0, 1, 1])
    with pytest.raises(SelfCorrectError, match="at least one"):
        accuracy_per_attempt(np.zeros((0, 2)))
    with pytest.raises(SelfCorrectError, match="out of range"):
        transition_rates(BALANCED, 0, 2)
    # SelfCorrectError is a ValueError
    with pytest.raises(ValueError):
        accuracy_per_attempt([[2, 0]])


# --------------------------------------------------------------------------- intervals


def test_wilson_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4)
    assert hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    lo, hi = wilson_interval(2, 4)
    assert lo == pytest.approx(0.1500, abs=1e-4) and hi == pytest.approx(0.8500, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bootstrap_deterministic_and_sensible():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    a = bootstrap_interval(x, seed=7)
    b = bootstrap_interval(x, seed=7)
    c = bootstrap_interval(x, seed=8)
    assert a == b
    assert a != c
    assert a[0] < x.mean() < a[1]
    # ~ mean ± 1.96 * sd / sqrt(n)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert a[0] == pytest.approx(x.mean() - half, abs=0.03)
    assert a[1] == pytest.approx(x.mean() + half, abs=0.03)
    # constant data: degenerate interval
    assert bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_bootstrap_generic_stat_matches_fast_mean_path():
    x = np.arange(50, dtype=float) % 7
    fast = bootstrap_interval(x, np.mean, n_boot=500, seed=3)
    slow = bootstrap_interval(x, lambda v: float(np.mean(v)), n_boot=500, seed=3)
    assert fast == pytest.approx(slow, abs=1e-12)
    med = bootstrap_interval(x, np.median, n_boot=500, seed=3)
    assert med[0] <= np.median(x) <= med[1]


def test_cluster_bootstrap_is_wider_for_correlated_samples():
    # 40 problems x 5 identical samples: really only 40 independent outcomes.
    per_problem = np.array([1.0] * 20 + [0.0] * 20)
    values = np.repeat(per_problem, 5)  # (200,)
    groups = np.repeat(np.arange(40), 5)
    naive = bootstrap_interval(values, seed=0)
    cluster = bootstrap_interval(values, seed=0, groups=groups)
    assert cluster == bootstrap_interval(values, seed=0, groups=[f"p{g}" for g in groups])
    assert (cluster[1] - cluster[0]) > 1.8 * (naive[1] - naive[0])
    # cluster CI ≈ CI of the 40 per-problem means
    per = bootstrap_interval(per_problem, seed=0)
    assert cluster[1] - cluster[0] == pytest.approx(per[1] - per[0], abs=0.05)


# --------------------------------------------------------------------------- edit distance


def test_edit_distance_ratio_cases():
    assert edit_distance_ratio("same text", "same text") == 0.0
    assert edit_distance_ratio("abc", "xyz") == 0.5  # 3 substitutions / 6 chars
    assert edit_distance_ratio("", "") == 0.0
    assert edit_distance_ratio("", "abc") == 1.0
    assert edit_distance_ratio("kitten", "sitting") == pytest.approx(3 / 13)
    assert edit_distance_ratio("a", "a ") == pytest.approx(1 / 3)  # raw strings, not stripped


def test_edit_stats_and_copy_rate():
    texts = [["a ", "a"], ["x", "y"], ["same", "same"], ["q", "q\n"]]
    st = edit_stats(texts, 0, 1, bins=10)
    # ratios: 1/3, 1/2, 0, 1/3
    assert st["mean"] == pytest.approx((1 / 3 + 1 / 2 + 0 + 1 / 3) / 4)
    assert st["copy_rate"] == 0.75  # three equal after .strip()
    assert st["copies"] == 3
    assert st["histogram"]["counts"] == [1, 0, 0, 2, 0, 1, 0, 0, 0, 0]
    assert st["histogram"]["bin_edges"] == pytest.approx([b / 10 for b in range(11)])
    # a ratio of exactly 1.0 lands in the last (closed) bin
    st1 = edit_stats([["", "abc"]], bins=4)
    assert st1["histogram"]["counts"] == [0, 0, 0, 1]


# --------------------------------------------------------------------------- summarize


def test_summarize_balanced_all_inputs():
    texts = [["x = 1", "x = 2"], ["ans 3", "ans 3 "], ["abc", "xyz"], ["", ""]]
    parsed = [["1", "2"], [None, "3"], ["a", None], [None, None]]
    truncated = [[False, False], [True, False], [False, False], [False, True]]
    lengths = [[10, 20], [30, 40], [50, 60], [70, 80]]
    s = summarize(BALANCED, texts=texts, parsed=parsed, truncated=truncated, lengths=lengths)
    assert s["n"] == 4 and s["attempts"] == 2 and s["n_groups"] is None
    assert s["accuracy"] == [0.5, 0.5]
    assert (s["delta"], s["delta_i2c"], s["delta_c2i"]) == (0.0, 0.25, 0.25)
    assert len(s["pairs"]) == 1 and (s["pairs"][0]["from"], s["pairs"][0]["to"]) == (1, 2)
    # ratios: 1/10, 1/11, 1/2, 0 ; copies: 2 of 4
    assert s["edit_distance_ratio"] == pytest.approx((1 / 10 + 1 / 11 + 1 / 2 + 0) / 4)
    assert s["copy_rate"] == 0.5
    assert sum(s["edit_histogram"]["counts"]) == 4
    assert s["parse_rate"] == [0.5, 0.5]
    assert s["truncation_rate"] == [0.25, 0.25]
    assert s["mean_length"] == [40.0, 50.0]

    ci = s["ci95"]
    assert ci["accuracy"][0] == pytest.approx(list(wilson_interval(2, 4)))
    assert ci["delta_i2c"] == pytest.approx(list(wilson_interval(1, 4)))
    assert ci["copy_rate"] == pytest.approx(list(wilson_interval(2, 4)))
    assert ci["parse_rate"][1] == pytest.approx(list(wilson_interval(2, 4)))
    assert ci["truncation_rate"][0] == pytest.approx(list(wilson_interval(1, 4)))
    # delta: bootstrap of paired differences [1, -1, 0, 0]
    assert ci["delta"] == pytest.approx(list(bootstrap_interval([1, -1, 0, 0])))
    assert ci["delta"][0] < 0 < ci["delta"][1]
    lo, hi = ci["edit_distance_ratio"]
    assert lo <= s["edit_distance_ratio"] <= hi
    assert s["ci_method"]["proportions"] == "wilson"
    # JSON-ready, no NaN
    assert json.loads(json.dumps(s, allow_nan=False)) == s


def test_summarize_k1_has_no_delta():
    s = summarize([[1], [0], [1]], texts=[["a"], ["b"], ["c"]])
    assert s["attempts"] == 1
    assert s["accuracy"] == pytest.approx([2 / 3])
    for key in ("delta", "delta_i2c", "delta_c2i", "edit_distance_ratio", "copy_rate", "edit_histogram"):
        assert s[key] is None
        if key != "edit_histogram":
            assert s["ci95"][key] is None
    assert s["pairs"] == []
    json.dumps(s, allow_nan=False)
    table = format_table(s)
    assert "66.7 [" in table and "–" in table


def test_summarize_k3_pairs():
    r = [[0, 0, 1], [0, 1, 1], [1, 0, 0], [1, 1, 1]]
    s = summarize(r)
    assert s["accuracy"] == [0.5, 0.5, 0.75]
    got = [(p["from"], p["to"], p["delta"], p["delta_i2c"], p["delta_c2i"]) for p in s["pairs"]]
    assert got == [
        (1, 2, 0.0, 0.25, 0.25),
        (2, 3, 0.25, 0.25, 0.0),
        (1, 3, 0.25, 0.5, 0.25),
    ]
    # headline delta keys are attempts 1 -> 2
    assert (s["delta"], s["delta_i2c"], s["delta_c2i"]) == (0.0, 0.25, 0.25)
    assert s["pairs"][2]["ci95"]["delta_i2c"] == pytest.approx(list(wilson_interval(2, 4)))
    assert len(s["ci95"]["accuracy"]) == 3


def test_summarize_group_ids_cluster_bootstrap():
    rng = np.random.default_rng(5)
    n_problems, n_samples = 30, 4
    p_right = rng.uniform(size=n_problems)
    r = (rng.uniform(size=(n_problems, n_samples, 2)) < p_right[:, None, None]).astype(int)
    r = r.reshape(-1, 2)  # (120, 2)
    gids = [f"prob{p}" for p in range(n_problems) for _ in range(n_samples)]
    s = summarize(r, group_ids=gids)
    assert s["n"] == 120 and s["n_groups"] == 30
    assert "cluster" in s["ci_method"]["proportions"]
    lo, hi = s["ci95"]["accuracy"][0]
    assert lo <= s["accuracy"][0] <= hi
    # same as a direct cluster bootstrap of the indicator
    assert [lo, hi] == pytest.approx(list(bootstrap_interval(r[:, 0], groups=gids)))
    assert s == summarize(r, group_ids=gids)  # deterministic
    json.dumps(s, allow_nan=False)


def test_summarize_input_validation():
    with pytest.raises(SelfCorrectError, match="texts"):
        summarize(BALANCED, texts=[["a", "b"]])
    with pytest.raises(SelfCorrectError, match="texts\\[1\\]"):
        summarize(BALANCED, texts=[["a", "b"], ["a"], ["a", "b"], ["a", "b"]])
    with pytest.raises(SelfCorrectError, match="lengths"):
        summarize(BALANCED, lengths=[[1, 2]])
    with pytest.raises(SelfCorrectError, match="group_ids"):
        summarize(BALANCED, group_ids=["a"])


# --------------------------------------------------------------------------- tables


def test_format_table():
    texts = [["abc", "xyz"], ["same", "same"], ["a", "a"], ["x", "y"]]
    s = summarize(BALANCED, texts=texts)
    table = format_table(s)
    lines = table.splitlines()
    assert len(lines) == 3
    for col in ("Acc@t1", "Acc@t2", "Δ(t1,t2)", "Δ^{i→c}(t1,t2)", "Δ^{c→i}(t1,t2)", "Edit ratio", "Copy rate",
                "Format@t1", "Format@t2"):
        assert col in lines[0]
    assert "50.0 [15.0, 85.0]" in lines[2]  # Wilson 2/4 -> [0.1500, 0.8500]
    assert "25.0 [" in lines[2]  # i2c and c2i
    assert "0.0 [" in lines[2] and "-0.0" not in table
    assert lines[2].count("|") == 10 and lines[2].endswith("| – | – |")     # no format input: dashes
    plain = format_table(s, with_ci=False)
    assert "[" not in plain and "| 50.0 | 50.0 | 0.0 | 25.0 | 25.0 |" in plain

    multi = format_table({"base": s, "score": summarize([[0, 1], [0, 1], [1, 1], [0, 1]])})
    mlines = multi.splitlines()
    assert mlines[0].startswith("| Method |") and len(mlines) == 4
    assert mlines[3].startswith("| score | 25.0 [") and "100.0 [" in mlines[3]


def test_rich_table():
    from rich.console import Console
    from rich.table import Table

    t = rich_table(summarize(BALANCED), title="demo")
    assert isinstance(t, Table)
    assert t.title == "demo"
    console = Console(width=200, record=True)
    console.print(t)
    out = console.export_text()
    assert "Acc@t1" in out and "50.0 [15.0, 85.0]" in out


# --------------------------------------------------------------------------- majority vote


def test_majority_vote():
    assert majority_vote(["1", "2", "2", "3"]) == "2"
    assert majority_vote(["1", "2", "2", "1"]) == "1"  # tie -> earliest seen
    assert majority_vote(["b", "a", "a", "b", "c"]) == "b"
    assert majority_vote([None, "3", None]) == "3"
    assert majority_vote([None, None, "7", "8", "8", None, None]) == "8"  # None never wins
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    close = lambda a, b: abs(float(a) - float(b)) < 1e-3  # noqa: E731
    assert majority_vote(["2.0", "1.0", "1.0001", "2.5"], same=close) == "1.0"


# --------------------------------------------------------------------------- plots


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        data = fh.read()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plots_write_pngs(tmp_path):
    from selfcorrect.plots import (
        plot_accuracy_per_attempt,
        plot_edit_histogram,
        plot_edit_histograms,
        plot_scaling,
    )

    pyplot_before = "matplotlib.pyplot" in sys.modules
    rng = np.random.default_rng(0)
    r = rng.integers(0, 2, size=(40, 2))
    texts = [[f"answer {rng.integers(100)}", f"answer {rng.integers(100)}"] for _ in range(40)]
    s = summarize(r, texts=texts)
    s2 = summarize(r[:, ::-1], texts=[t[::-1] for t in texts])

    paths = [
        plot_edit_histogram(s, tmp_path / "edit.png", title="Edit ratio"),
        plot_edit_histogram(edit_stats(texts), tmp_path / "edit_stats.png", title="x"),
        plot_edit_histogram(s["edit_histogram"], tmp_path / "edit_bare.png", title="x"),
        plot_accuracy_per_attempt(s, tmp_path / "acc.png"),
        plot_accuracy_per_attempt(summarize(rng.integers(0, 2, size=(30, 3))), tmp_path / "acc3.png"),
        plot_edit_histograms({"SFT": s, "SCoRe": s2, "base": s}, tmp_path / "sub" / "edits.png"),
        plot_scaling(
            [
                {"budget": 1, "parallel": 0.40, "parallel_ci": [0.35, 0.45], "sequential": 0.40,
                 "sequential_ci": [0.35, 0.45]},
                {"budget": 2, "parallel": 0.45, "parallel_ci": [0.40, 0.50], "sequential": 0.48,
                 "sequential_ci": [0.43, 0.53]},
                (4, 0.48, (0.43, 0.53), 0.52, None),
                {"budget": 8, "parallel_acc": 0.50, "parallel_ci": None, "sequential_acc": None},
            ],
            tmp_path / "scaling.png",
        ),
    ]
    for p in paths:
        assert isinstance(p, str)
        assert _is_png(p), p
    assert paths[5].endswith("sub/edits.png")
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules

    with pytest.raises(ValueError, match="histogram"):
        plot_edit_histogram(summarize(r), tmp_path / "none.png", title="x")


# --------------------------------------------------------------------------- self-verification
def test_self_verification_rates_on_a_hand_counted_example():
    """Does attempt 2 know when attempt 1 was wrong?  Every rate counted by hand below."""
    from selfcorrect.metrics import summarize

    r = [[0, 1], [0, 0], [1, 1], [1, 0], [0, 0], [1, 1]]        # attempt 1 wrong in rows 0, 1, 4
    texts = [["a", "b"], ["c", "c"], ["d", "d"], ["e", "f"], ["g", "h"], ["i", "i"]]   # edited: 0, 3, 4
    parsed = [["1", "2"], ["3", "3"], ["4", "4"], ["5", "6"], [None, "7"], ["8", "8"]]  # changed: 0, 3, 4
    sv = summarize(r, texts, parsed)["self_verification"][0]
    assert (sv["from"], sv["to"], sv["n_wrong"], sv["n_right"], sv["n_changed"]) == (1, 2, 3, 3, 3)
    assert sv["edit_rate_wrong"] == pytest.approx(2 / 3) and sv["edit_rate_right"] == pytest.approx(1 / 3)
    assert sv["answer_change_rate_wrong"] == pytest.approx(2 / 3)         # rows 0, 4 of 0, 1, 4
    assert sv["answer_change_rate_right"] == pytest.approx(1 / 3)         # row 3 of 2, 3, 5
    assert sv["change_precision"] == pytest.approx(2 / 3)                 # of changed 0, 3, 4: wrong 0, 4
    assert sv["change_recall"] == sv["answer_change_rate_wrong"]
    low, high = sv["ci95"]["change_precision"]
    assert low < 2 / 3 < high                                             # Wilson on 2 of 3
    copier = summarize(r, [[t[0], t[0]] for t in texts], [[p[0], p[0]] for p in parsed])["self_verification"][0]
    assert copier["change_recall"] == 0.0 and copier["change_precision"] is None and copier["edit_rate_wrong"] == 0.0


def test_ratio_interval_is_a_cluster_bootstrap_of_the_conditional_rate():
    import numpy as np

    from selfcorrect.intervals import ratio_interval

    rng = np.random.default_rng(0)
    den = (rng.random(400) < 0.5).astype(float)
    num = den * (rng.random(400) < 0.3)
    low, high = ratio_interval(num, den, seed=1)
    assert low < num.sum() / den.sum() < high and high - low < 0.2
    assert ratio_interval(num, den, seed=1) == (low, high)                 # deterministic
    assert ratio_interval(num, np.zeros(400)) is None
    # correlated samples of one problem: the cluster interval is wider than the episode-level one
    groups = np.repeat(np.arange(40), 10)
    same = np.repeat(rng.random(40) < 0.3, 10).astype(float)
    ones = np.ones(400)
    a, b = ratio_interval(same, ones, seed=2, groups=groups)
    c, d = ratio_interval(same, ones, seed=2)
    assert b - a > 2 * (d - c)


def test_the_self_verification_table_is_well_formed_markdown():
    from selfcorrect.metrics import summarize
    from selfcorrect.report import format_self_verification

    s = summarize([[0, 1], [1, 1], [0, 0]], [["a", "b"], ["c", "c"], ["d", "d"]], [["1", "2"], ["3", "3"], ["4", "4"]])
    lines = format_self_verification(s).splitlines()
    assert len({line.count("|") for line in lines}) == 1 and len(lines) == 3     # header, rule, one pair
    assert lines[2].startswith("| t1 → t2 | 50.0 [")                            # edited 1 of the 2 wrong
    methods = format_self_verification({"score": s, "star": s}).splitlines()
    assert [m.split(" | ")[0] for m in methods[2:]] == ["| score", "| star"]
    assert format_self_verification(summarize([[1], [0]])) == ""


def test_format_rate_per_attempt_with_its_interval():
    """Format compliance: the share of attempts in the instructed answer form, per attempt, with a CI."""
    from selfcorrect.metrics import summarize, wilson_interval

    rewards = np.array([[0, 1], [1, 1], [0, 0], [0, 1]], dtype=float)
    formatted = np.array([[False, True], [True, True], [False, False], [True, True]])
    s = summarize(rewards, formatted=formatted)
    assert s["format_rate"] == [0.5, 0.75]
    assert s["ci95"]["format_rate"] == [pytest.approx(list(wilson_interval(2, 4)), abs=1e-4),
                                        pytest.approx(list(wilson_interval(3, 4)), abs=1e-4)]
    assert summarize(rewards)["format_rate"] is None
    with pytest.raises(SelfCorrectError, match="formatted has shape"):
        summarize(rewards, formatted=formatted[:, :1])
    cells = row_cells(s)
    assert cells[-2:] == [f"50.0 [{100 * wilson_interval(2, 4)[0]:.1f}, {100 * wilson_interval(2, 4)[1]:.1f}]",
                          f"75.0 [{100 * wilson_interval(3, 4)[0]:.1f}, {100 * wilson_interval(3, 4)[1]:.1f}]"]


def test_wrong_to_right_pairs_split_into_answer_corrections_and_form_repairs():
    from selfcorrect import report

    rewards = np.array([[0, 1], [0, 1], [1, 0], [0, 0], [1, 1]])
    lenient = np.array([[0, 1], [1, 1], [1, 0], [0, 0], [1, 1]])     # episode 2 held the answer, not the form
    s = summarize(rewards, lenient=lenient)
    assert s["delta_i2c"] == pytest.approx(2 / 5)
    assert s["answer_corrections"] == pytest.approx(1 / 5) and s["form_repairs"] == pytest.approx(1 / 5)
    assert s["answer_corrections"] + s["form_repairs"] == pytest.approx(s["delta_i2c"])
    assert s["ci95"]["answer_corrections"] is not None
    table = report.format_table({"m": s})
    assert "| Answer corr. | Form repairs |" in table and "| 20.0 [" in table
    plain = summarize(rewards)                                          # no lenient reader: no split, no columns
    assert plain["answer_corrections"] is None and "Answer corr." not in report.format_table({"m": plain})
    with pytest.raises(SelfCorrectError, match="lenient has shape"):
        summarize(rewards, lenient=lenient[:, :1])
