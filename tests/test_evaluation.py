"""Evaluation arithmetic on hand-made episodes (no model): scaling votes and the summary metrics."""

from __future__ import annotations

import random

import pytest

from selfcorrect.errors import ConfigError
from selfcorrect.evaluation import EvalConfig, scaling_markdown, scaling_table
from selfcorrect.results import episode_record, summarize_episodes
from selfcorrect.metrics import wilson_interval
from selfcorrect.rollout.episodes import Attempt, Episode
from selfcorrect.tasks.base import Problem, Task


def _attempt(answer: str | None, reward: float, text: str | None = None, n_tokens: int = 3,
             truncated: bool = False) -> Attempt:
    return Attempt(ids=list(range(n_tokens)), start=0, text=text if text is not None else f"answer {answer}",
                   truncated=truncated, reward=reward, answer=answer)


def _episode(problem_id: str, sample: int, *attempts: Attempt) -> Episode:
    return Episode(problem=Problem(id=problem_id, question=f"q {problem_id}"), sample=sample, tokens=[],
                   attempts=list(attempts))


def _equal(a: str, b: str) -> bool:
    return a == b


# ---------------------------------------------------------------- scaling_table

# Two problems, four samples each; samples 0 and 1 also have a second attempt.
#
# Problem "a" (right answer 4):
#   attempt 1:  s0 "3"✗  s1 "4"✓  s2 "4"✓  s3 "5"✗
#   attempt 2:  s0 "4"✓  s1 "5"✗
# Problem "b" (right answer 7):
#   attempt 1:  s0 None✗ s1 "7"✓  s2 "7"✓  s3 "8"✗
#   attempt 2:  s0 None✗ s1 "8"✗
#
# B = 2  parallel   (attempt 1 of s0, s1): a: "3" vs "4" tie → earliest "3" ✗;  b: None ignored → "7" ✓  → 1/2
#        sequential (attempt 2 of s0):     a: "4" ✓;                           b: only None → no winner ✗ → 1/2
# B = 4  parallel   (attempt 1 of s0..s3): a: "4"×2 ✓;                         b: "7"×2 ✓             → 2/2
#        sequential (attempt 2 of s0, s1): a: "4" vs "5" tie → "4" ✓;          b: None ignored → "8" ✗ → 1/2
EXPECTED = {2: (1, 1), 4: (2, 1)}  # budget -> (parallel hits, sequential hits) out of 2 problems


def _scaling_episodes() -> list[Episode]:
    return [
        _episode("a", 0, _attempt("3", 0.0), _attempt("4", 1.0)),
        _episode("a", 1, _attempt("4", 1.0), _attempt("5", 0.0)),
        _episode("a", 2, _attempt("4", 1.0)),
        _episode("a", 3, _attempt("5", 0.0)),
        _episode("b", 0, _attempt(None, 0.0), _attempt(None, 0.0)),
        _episode("b", 1, _attempt("7", 1.0), _attempt("8", 0.0)),
        _episode("b", 2, _attempt("7", 1.0)),
        _episode("b", 3, _attempt("8", 0.0)),
    ]


def test_scaling_table_by_hand():
    rows = scaling_table(_scaling_episodes(), [2, 4], _equal)
    assert [r["budget"] for r in rows] == [2, 4]
    for row in rows:
        par, seq = EXPECTED[row["budget"]]
        assert row["problems"] == 2
        assert row["parallel"] == par / 2
        assert row["sequential"] == seq / 2
        assert row["parallel_ci"] == pytest.approx(list(wilson_interval(par, 2)))
        assert row["sequential_ci"] == pytest.approx(list(wilson_interval(seq, 2)))


def test_scaling_table_ignores_input_order_and_sorts_budgets():
    episodes = _scaling_episodes()
    random.Random(3).shuffle(episodes)
    rows = scaling_table(episodes, [4, 2], _equal)
    assert [r["budget"] for r in rows] == [2, 4]
    assert [(r["parallel"], r["sequential"]) for r in rows] == [(0.5, 0.5), (1.0, 0.5)]


def test_scaling_table_winner_counts_as_right_if_any_equivalent_attempt_was_rewarded():
    numeric = lambda a, b: float(a) == float(b)  # noqa: E731
    episodes = [
        # "4.0" (seen first, rewarded 0 by a strict verifier) and "4" (rewarded 1) are one cluster
        _episode("p", 0, _attempt("4.0", 0.0), _attempt("4.0", 0.0)),
        _episode("p", 1, _attempt("4", 1.0), _attempt("6", 0.0)),
    ]
    rows = scaling_table(episodes, [2], numeric)
    assert rows[0]["parallel"] == 1.0  # the "4.0"/"4" cluster wins and one of its members is right
    assert rows[0]["sequential"] == 0.0  # one episode: "4.0" alone, rewarded 0
    assert scaling_table(episodes, [2], _equal)[0]["parallel"] == 0.0  # strict: tie → "4.0" wins, wrong


def test_scaling_markdown_rows():
    md = scaling_markdown(scaling_table(_scaling_episodes(), [2, 4], _equal))
    lines = md.splitlines()
    assert lines[0].startswith("| budget |") and lines[1] == "|---:|---:|---:|"
    lo, hi = (100 * x for x in wilson_interval(1, 2))
    assert lines[2] == f"| 2 | 50.0 [{lo:.1f}, {hi:.1f}] | 50.0 [{lo:.1f}, {hi:.1f}] |"
    assert lines[3].startswith("| 4 | 100.0 [")
    assert len(lines) == 4


# ---------------------------------------------------------------- summarize_episodes

# Five episodes of two attempts over four problems ("p1" sampled twice).
#   rewards   t1 t2   transition   texts t1 → t2     edit ratio   copy (after strip)
#   e0         0  1   i→c          "12" → "13"       1/4          no
#   e1         0  1   i→c          "x"  → "x"        0            yes
#   e2         1  0   c→i          "ab" → "ab "      1/5          yes
#   e3         1  1   –            ""   → ""         0            yes
#   e4         0  0   –            "abc"→ "xyz"      3/6          no
# Accuracy@t1 = 2/5, Accuracy@t2 = 3/5, Δ^{i→c} = 2/5, Δ^{c→i} = 1/5, Δ = 1/5
# mean edit ratio = (0.25 + 0 + 0.2 + 0 + 0.5) / 5 = 0.19, copy rate = 3/5


def _summary_episodes() -> list[Episode]:
    rows = [
        ("p1", 0, (0.0, "12", "1", 4, False), (1.0, "13", "3", 2, False)),
        ("p1", 1, (0.0, "x", None, 4, True), (1.0, "x", "9", 2, False)),
        ("p2", 0, (1.0, "ab", "2", 4, False), (0.0, "ab ", None, 4, True)),
        ("p3", 0, (1.0, "", "5", 4, False), (1.0, "", "5", 6, False)),
        ("p4", 0, (0.0, "abc", None, 4, False), (0.0, "xyz", "0", 6, False)),
    ]
    return [
        _episode(pid, s, *(_attempt(ans, r, text=t, n_tokens=n, truncated=tr) for r, t, ans, n, tr in attempts))
        for pid, s, *attempts in rows
    ]


def test_summarize_episodes_by_hand():
    m = summarize_episodes(_summary_episodes(), seed=0)
    assert (m["n"], m["attempts"], m["n_groups"]) == (5, 2, 4)
    assert m["accuracy"] == [2 / 5, 3 / 5]
    assert m["delta_i2c"] == 2 / 5 and m["delta_c2i"] == 1 / 5
    assert m["delta"] == m["delta_i2c"] - m["delta_c2i"]
    assert m["delta"] == pytest.approx(1 / 5, abs=1e-15)
    assert m["edit_distance_ratio"] == pytest.approx(0.19)
    assert m["copy_rate"] == 3 / 5
    assert m["parse_rate"] == [3 / 5, 4 / 5]
    assert m["mean_length"] == [4.0, 4.0]
    assert m["truncation_rate"] == [1 / 5, 1 / 5]
    assert [(p["from"], p["to"], p["i2c_count"], p["c2i_count"]) for p in m["pairs"]] == [(1, 2, 2, 1)]
    assert m["edit_histogram"]["counts"][0] == 2  # the two ratios of 0
    # group ids are the problem ids: intervals are a cluster bootstrap over problems
    assert "cluster bootstrap" in m["ci_method"]["proportions"]


def test_summarize_episodes_is_deterministic_in_the_seed():
    a = summarize_episodes(_summary_episodes(), seed=5)
    b = summarize_episodes(_summary_episodes(), seed=5)
    assert a == b


def test_summarize_episodes_three_attempts():
    eps = [
        _episode("a", 0, _attempt("1", 0.0), _attempt("2", 1.0), _attempt("2", 1.0)),
        _episode("b", 0, _attempt("1", 1.0), _attempt("1", 1.0), _attempt("3", 0.0)),
        _episode("c", 0, _attempt("1", 0.0), _attempt("2", 0.0), _attempt("4", 1.0)),
    ]
    m = summarize_episodes(eps)
    assert m["accuracy"] == [1 / 3, 2 / 3, 2 / 3]
    # delta & co. are attempts 1 → 2
    assert (m["delta_i2c"], m["delta_c2i"]) == (1 / 3, 0.0)
    pairs = {(p["from"], p["to"]): (p["i2c_count"], p["c2i_count"]) for p in m["pairs"]}
    assert pairs == {(1, 2): (1, 0), (2, 3): (1, 1), (1, 3): (2, 1)}


def test_summarize_episodes_single_attempt():
    m = summarize_episodes([_episode("a", 0, _attempt("1", 1.0)), _episode("b", 0, _attempt("2", 0.0))])
    assert m["accuracy"] == [0.5]
    assert m["delta"] is None and m["edit_distance_ratio"] is None and m["pairs"] == []


def test_summarize_episodes_needs_episodes():
    with pytest.raises(ConfigError, match="no episodes"):
        summarize_episodes([])


def test_episode_record():
    ep = _summary_episodes()[2]
    assert episode_record(ep) == {
        "id": "p2",
        "sample": 0,
        "question": "q p2",
        "gold": None,
        "attempts": [
            {"text": "ab", "answer": "2", "reward": 1.0, "reason": "", "tokens": 4, "truncated": False,
             "formatted": None},
            {"text": "ab ", "answer": None, "reward": 0.0, "reason": "", "tokens": 4, "truncated": True,
             "formatted": None},
        ],
    }
    ep.attempts[1].reason = "failed: AssertionError at tests line 3: assert f(1) == 2"
    assert episode_record(ep)["attempts"][1]["reason"] == ep.attempts[1].reason


# ---------------------------------------------------------------- EvalConfig checks


def test_eval_config_defaults_are_valid_and_documented_protocol():
    cfg = EvalConfig()
    assert (cfg.attempts, cfg.temperature, cfg.samples) == (2, 0.0, 1)
    assert cfg.sampling_params().greedy
    assert cfg.sampling_params(temperature=0.7).temperature == 0.7


@pytest.mark.parametrize("kwargs", [dict(attempts=0), dict(samples=2), dict(limit=0), dict(generation_batch_size=0),
                                    dict(top_p=1.5), dict(scaling=True, budgets=[]),
                                    dict(scaling=True, budgets=[2, 5])])
def test_eval_config_rejects(kwargs):
    with pytest.raises(ConfigError):
        EvalConfig(**kwargs)


def test_verdicts_say_why_an_attempt_scored_zero():
    """A verifier that gives only a reward still gets a reason per failed attempt: no answer (in the form asked for),
    or the wrong answer next to the gold one; a verifier's own reason is kept."""
    from selfcorrect.tasks import load_task
    from selfcorrect.tasks.base import Verdict

    task = load_task("arithmetic", split="test", n=3)
    p = task.problems[0]
    verdicts = task.verdicts(["I do not know.", "The final answer is 100000.", f"The final answer is {p.answer}."],
                             [p, p, p])
    assert [v.reason for v in verdicts] == ["no answer in the instructed form", f"wrong answer '100000' (expected '{p.answer}')", ""]
    own = Task(name="own", problems=[p], format_prompt=lambda q: q.question, correction_instruction="again",
               verify=lambda t, q: 0.0, extract_answer=lambda t: t,
               batch_verdicts=lambda ts, qs: [Verdict(0.0, "failed: the tests say no") for _ in ts])
    assert own.verdicts(["x"], [p])[0].reason == "failed: the tests say no"

