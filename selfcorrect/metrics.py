"""Self-correction metrics from SCoRe (Kumar et al., 2024), as pure numpy functions.

Every evaluation produces a reward matrix ``rewards`` of shape ``(N, K)``: ``N``
episodes (problems x samples per problem) and ``K`` attempts per episode, where
``rewards[n, t]`` is 1 if attempt ``t`` of episode ``n`` is correct and 0
otherwise.  The paper's metrics (Section 3 / Table 2 of the paper) are

* ``Accuracy@t``  — the fraction of episodes whose attempt ``t`` is correct;
* ``Δ(t1, t2)``   — ``Accuracy@t2 − Accuracy@t1``, the net improvement from
  self-correction;
* ``Δ^{i→c}(t1, t2)`` — the fraction of episodes whose first attempt is
  *incorrect* and whose second attempt is *correct* (problems fixed);
* ``Δ^{c→i}(t1, t2)`` — the fraction of episodes whose first attempt is
  *correct* and whose second attempt is *incorrect* (problems broken);
* the *edit distance ratio* between two attempts, "edit distance / combined
  length", whose histogram shows whether a model actually revises its answer
  or merely copies it (the paper's collapse diagnostic).

By construction ``Δ = Δ^{i→c} − Δ^{c→i}`` (episodes that are right at both or
wrong at both attempts cancel).

Conventions used throughout this module:

* Attempt indices passed to functions (``i``, ``j``) are **0-based** Python
  indices (negative indices count from the end, ``-1`` = last attempt).  Keys
  and labels shown to people (``"from"``/``"to"`` in :func:`summarize`,
  ``Acc@t1`` in tables) are **1-based** attempt numbers, as in the paper.
* Rates are fractions in ``[0, 1]``; :func:`selfcorrect.report.format_table` shows them as
  percentages.
* Confidence intervals are 95% by default: Wilson score intervals for
  proportions, percentile bootstrap intervals for differences and means (with
  a cluster bootstrap over problems when several samples share a problem, see
  :func:`summarize`).

Nothing here imports torch; inputs are numpy arrays or nested lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np
from rapidfuzz.distance import Levenshtein

from selfcorrect.errors import SelfCorrectError
from selfcorrect.intervals import _group_codes, _z_for_alpha, bootstrap_interval, ratio_interval, wilson_interval

__all__ = [
    "wilson_interval",
    "bootstrap_interval",
    "accuracy_per_attempt",
    "transition_rates",
    "edit_distance_ratio",
    "edit_stats",
    "summarize",
    "majority_vote",
]

T = TypeVar("T")

# --------------------------------------------------------------------------- #
# Input validation helpers
# --------------------------------------------------------------------------- #


def _as_rewards(rewards: Any) -> np.ndarray:
    """Validate ``rewards`` and return it as an ``(N, K)`` int64 array of 0/1."""
    arr = np.asarray(rewards)
    if arr.ndim != 2:
        raise SelfCorrectError(
            f"rewards must be a 2-D array of shape (episodes, attempts); got shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SelfCorrectError(
            f"rewards must have at least one episode and one attempt; got shape {arr.shape}"
        )
    if arr.dtype == object:
        raise SelfCorrectError("rewards must be numeric 0/1 values (found non-numeric entries)")
    arr = arr.astype(np.float64)
    if not np.all((arr == 0.0) | (arr == 1.0)):
        bad = arr[~((arr == 0.0) | (arr == 1.0))][0]
        raise SelfCorrectError(f"rewards must be binary (0 or 1); found the value {bad!r}")
    return arr.astype(np.int64)  # (N, K)


def _attempt_index(i: int, k: int, name: str = "i") -> int:
    """Normalise a 0-based (possibly negative) attempt index against ``k`` attempts."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise SelfCorrectError(f"attempt index {name} must be an integer; got {i!r}")
    i = int(i)
    if not -k <= i < k:
        raise SelfCorrectError(
            f"attempt index {name}={i} is out of range for {k} attempt(s) (indices are 0-based)"
        )
    return i % k


def _check_nk(obj: Any, n: int, k: int, name: str) -> None:
    """Check that a nested list / array has ``n`` rows of ``k`` entries."""
    if len(obj) != n:
        raise SelfCorrectError(f"{name} has {len(obj)} rows but rewards has {n} episodes")
    for row_idx, row in enumerate(obj):
        if len(row) != k:
            raise SelfCorrectError(
                f"{name}[{row_idx}] has {len(row)} attempts but rewards has {k} attempts"
            )


def _as_texts(texts: Sequence[Sequence[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    for n_idx, row in enumerate(texts):
        row_out = []
        for t_idx, s in enumerate(row):
            if not isinstance(s, str):
                raise SelfCorrectError(
                    f"texts[{n_idx}][{t_idx}] must be a string; got {type(s).__name__}"
                )
            row_out.append(s)
        out.append(row_out)
    return out


def _num(x: Any) -> float | None:
    """A JSON-safe float: NaN / inf / None become ``None``."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pair(ci: tuple[float, float] | None) -> list[float | None] | None:
    if ci is None:
        return None
    return [_num(ci[0]), _num(ci[1])]


# --------------------------------------------------------------------------- #
# Accuracy and transitions
# --------------------------------------------------------------------------- #


def accuracy_per_attempt(rewards: Any) -> list[float]:
    """``Accuracy@t`` for every attempt ``t``: the column means of ``rewards`` (N, K).

    Returns a list of ``K`` floats, each computed as ``count_correct_t / N``.
    """
    r = _as_rewards(rewards)  # (N, K)
    n = r.shape[0]
    return [int(c) / n for c in r.sum(axis=0)]


def transition_rates(rewards: Any, i: int = 0, j: int = 1) -> dict[str, Any]:
    """Accuracy change and problem transitions between attempts ``i`` and ``j``.

    ``i`` and ``j`` are 0-based attempt indices (negative counts from the end).
    With ``N`` episodes, ``r_i = rewards[:, i]`` and ``r_j = rewards[:, j]``:

    * ``i2c`` = Δ^{i→c}(i, j) = #{r_i = 0 and r_j = 1} / N  (fixed);
    * ``c2i`` = Δ^{c→i}(i, j) = #{r_i = 1 and r_j = 0} / N  (broken);
    * ``delta`` = Δ(i, j) = Accuracy@j − Accuracy@i.

    Mathematically ``Accuracy@j − Accuracy@i = (#i2c − #c2i) / N``.  The value
    returned as ``delta`` is computed as ``i2c − c2i`` from the two returned
    floats, so ``delta == i2c - c2i`` holds *exactly* (bit for bit) in floating
    point.  (Computing ``(#i2c − #c2i) / N`` instead would not: e.g. with
    ``N = 10``, ``3/10 − 1/10 = 0.19999999999999998 != 2/10``.)  ``delta``
    agrees with ``acc_j − acc_i`` to within one unit in the last place; the
    integer counts satisfy ``i2c_count − c2i_count == correct_j − correct_i``
    exactly.

    Returns a dict with ``i``, ``j`` (0-based, normalised), ``n``, ``acc_i``,
    ``acc_j``, ``delta``, ``i2c``, ``c2i``, ``i2c_count``, ``c2i_count``.
    """
    r = _as_rewards(rewards)  # (N, K)
    n, k = r.shape
    i = _attempt_index(i, k, "i")
    j = _attempt_index(j, k, "j")
    ri, rj = r[:, i], r[:, j]  # (N,), (N,)
    i2c_count = int(np.sum((ri == 0) & (rj == 1)))
    c2i_count = int(np.sum((ri == 1) & (rj == 0)))
    i2c = i2c_count / n
    c2i = c2i_count / n
    return {
        "i": i,
        "j": j,
        "n": n,
        "acc_i": int(ri.sum()) / n,
        "acc_j": int(rj.sum()) / n,
        "delta": i2c - c2i,
        "i2c": i2c,
        "c2i": c2i,
        "i2c_count": i2c_count,
        "c2i_count": c2i_count,
    }


# --------------------------------------------------------------------------- #
# Edit distance
# --------------------------------------------------------------------------- #


def edit_distance_ratio(a: str, b: str) -> float:
    """The paper's edit distance ratio: edit distance / combined length.

    ``Levenshtein.distance(a, b) / (len(a) + len(b))`` over characters (the
    raw strings, not stripped).  Two empty strings give ``0.0``.

    The ratio lies in ``[0, 1]``: ``0`` means identical strings; two
    equal-length strings with nothing in common give ``0.5`` (``"abc"`` vs
    ``"xyz"`` → 3/6); ``1`` is reached only when exactly one string is empty.
    """
    total = len(a) + len(b)
    if total == 0:
        return 0.0
    return Levenshtein.distance(a, b) / total


def _edit_ratios(texts: list[list[str]], i: int, j: int) -> np.ndarray:
    return np.array([edit_distance_ratio(row[i], row[j]) for row in texts], dtype=np.float64)


def _copies(texts: list[list[str]], i: int, j: int) -> np.ndarray:
    return np.array([row[i].strip() == row[j].strip() for row in texts], dtype=np.int64)


def edit_stats(texts: Sequence[Sequence[str]], i: int = 0, j: int = 1, bins: int = 10) -> dict[str, Any]:
    """Edit-distance statistics between attempts ``i`` and ``j`` (0-based) of every episode.

    ``texts`` is ``N`` lists of ``K`` attempt strings.  Returns a JSON-ready
    dict:

    * ``n`` — number of episodes;
    * ``mean``, ``median`` — of the per-episode :func:`edit_distance_ratio`;
    * ``copy_rate`` — fraction of episodes whose two attempts are identical
      after ``.strip()`` (``copies`` is the count);
    * ``histogram`` — ``{"counts": [...], "bin_edges": [...]}``: ``bins``
      equal-width bins over ``[0, 1]`` (``bins + 1`` edges; the last bin is
      closed on the right, as in ``numpy.histogram``).
    """
    if bins < 1:
        raise SelfCorrectError(f"bins must be positive; got {bins}")
    tx = _as_texts(texts)
    n = len(tx)
    if n == 0:
        raise SelfCorrectError("edit_stats needs at least one episode")
    k = len(tx[0])
    for row_idx, row in enumerate(tx):
        if len(row) != k:
            raise SelfCorrectError(f"texts[{row_idx}] has {len(row)} attempts; texts[0] has {k}")
    i = _attempt_index(i, k, "i")
    j = _attempt_index(j, k, "j")
    ratios = _edit_ratios(tx, i, j)  # (N,)
    copies = _copies(tx, i, j)  # (N,)
    counts, edges = np.histogram(ratios, bins=bins, range=(0.0, 1.0))
    return {
        "i": i,
        "j": j,
        "n": n,
        "mean": float(ratios.mean()),
        "median": float(np.median(ratios)),
        "copy_rate": int(copies.sum()) / n,
        "copies": int(copies.sum()),
        "histogram": {
            "counts": [int(c) for c in counts],
            "bin_edges": [float(e) for e in edges],
        },
    }


# --------------------------------------------------------------------------- #
# Summary
# --------------------------------------------------------------------------- #


class _CI:
    """Computes 95%-style intervals, switching to the cluster bootstrap with groups."""

    def __init__(self, groups: Sequence[Hashable] | None, n_boot: int, seed: int, alpha: float, z: float):
        self.groups = groups
        self.n_boot = n_boot
        self.seed = seed
        self.alpha = alpha
        self.z = z

    def proportion(self, indicator: np.ndarray) -> list[float | None]:
        """CI of the mean of a 0/1 indicator (N,)."""
        if self.groups is None:
            return _pair(wilson_interval(int(indicator.sum()), indicator.shape[0], z=self.z))
        return self.mean(indicator)

    def ratio(self, numerator: np.ndarray, denominator: np.ndarray) -> list[float | None] | None:
        """CI of Σ numerator / Σ denominator (a conditional rate): Wilson on the denominator's episodes,
        or the cluster bootstrap with groups."""
        if self.groups is None:
            return _pair(wilson_interval(int(numerator.sum()), int(denominator.sum()), z=self.z))
        found = ratio_interval(numerator, denominator, n_boot=self.n_boot, seed=self.seed, alpha=self.alpha,
                               groups=self.groups)
        return _pair(found) if found is not None else None

    def mean(self, values: np.ndarray) -> list[float | None]:
        """Bootstrap CI of the mean of per-episode values (N,)."""
        return _pair(
            bootstrap_interval(
                values, np.mean, n_boot=self.n_boot, seed=self.seed, alpha=self.alpha, groups=self.groups
            )
        )


def _pair_summary(r: np.ndarray, i: int, j: int, ci: _CI) -> dict[str, Any]:
    tr = transition_rates(r, i, j)
    ri, rj = r[:, i], r[:, j]
    return {
        "from": i + 1,
        "to": j + 1,
        "delta": tr["delta"],
        "delta_i2c": tr["i2c"],
        "delta_c2i": tr["c2i"],
        "i2c_count": tr["i2c_count"],
        "c2i_count": tr["c2i_count"],
        "ci95": {
            # paired per-episode differences r_j − r_i ∈ {−1, 0, 1}; their mean is Δ
            "delta": ci.mean((rj - ri).astype(np.float64)),
            "delta_i2c": ci.proportion(((ri == 0) & (rj == 1)).astype(np.int64)),
            "delta_c2i": ci.proportion(((ri == 1) & (rj == 0)).astype(np.int64)),
        },
    }


def _changed_answers(parsed: Sequence[Sequence[Any]], i: int, j: int) -> np.ndarray:
    """``(N,)`` 1 where attempt j's answer differs from attempt i's (an answer appearing or vanishing counts)."""
    return np.array([row[i] != row[j] for row in parsed], dtype=np.int64)


def self_verification(r: np.ndarray, texts: list[list[str]] | None, parsed: Sequence[Sequence[Any]] | None,
                      i: int, j: int, ci: _CI) -> dict[str, Any]:
    """Does attempt j know when attempt i was wrong?  Rates conditional on attempt i's correctness.

    * ``edit_rate_wrong`` / ``edit_rate_right`` -- attempt j's text differs from attempt i's, among
      episodes whose attempt i was wrong / right (needs ``texts``);
    * ``answer_change_rate_wrong`` / ``answer_change_rate_right`` -- likewise for the extracted answer
      (needs ``parsed``);
    * ``change_precision`` -- among episodes whose answer changed, the share where attempt i was wrong;
      ``change_recall`` -- among episodes whose attempt i was wrong, the share whose answer changed
      ("changed the answer" as a detector of a wrong attempt i; recall = answer_change_rate_wrong).

    A model that copies everything has recall 0; one that changes everything has recall 1 and
    precision = the error rate of attempt i.  Every rate has a 95% interval in ``ci95``.
    """
    wrong = (r[:, i] == 0).astype(np.int64)                                     # (N,)
    right = 1 - wrong
    out: dict[str, Any] = {"from": i + 1, "to": j + 1, "n_wrong": int(wrong.sum()), "n_right": int(right.sum())}
    cis: dict[str, Any] = {}

    def rate(name: str, hits: np.ndarray, among: np.ndarray) -> None:
        total = int(among.sum())
        out[name] = float((hits * among).sum() / total) if total else None
        cis[name] = ci.ratio(hits * among, among) if total else None

    if texts is not None:
        edited = (1 - _copies(texts, i, j)).astype(np.int64)
        rate("edit_rate_wrong", edited, wrong)
        rate("edit_rate_right", edited, right)
    if parsed is not None:
        changed = _changed_answers(parsed, i, j)
        out["n_changed"] = int(changed.sum())
        rate("answer_change_rate_wrong", changed, wrong)
        rate("answer_change_rate_right", changed, right)
        rate("change_precision", wrong, changed)
        rate("change_recall", changed, wrong)
    out["ci95"] = cis
    return out


def summarize(
    rewards: Any,
    texts: Sequence[Sequence[str]] | None = None,
    parsed: Sequence[Sequence[Any]] | None = None,
    truncated: Any = None,
    lengths: Any = None,
    group_ids: Sequence[Hashable] | None = None,
    *,
    edit_bins: int = 10,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """All self-correction metrics of one evaluation, as a JSON-ready dict.

    Inputs (``N`` episodes, ``K`` attempts):

    * ``rewards`` — ``(N, K)`` of 0/1 (required);
    * ``texts`` — ``N`` lists of ``K`` attempt strings (edit ratio, copy rate);
    * ``parsed`` — ``N x K`` extracted answers, ``None`` = unparsable (parse rate);
    * ``truncated`` — ``(N, K)`` bool, attempt hit the token limit;
    * ``lengths`` — ``(N, K)`` generated token counts;
    * ``group_ids`` — ``N`` problem ids, when each problem was sampled several
      times.

    Returned keys (rates are fractions; per-attempt values are lists of length
    ``K``; anything whose input is missing, or that needs ``K >= 2``, is
    ``None``):

    * ``n`` (episodes), ``attempts`` (``K``), ``n_groups`` (distinct problems,
      or ``None`` without ``group_ids``);
    * ``accuracy`` — ``Accuracy@t`` per attempt;
    * ``delta``, ``delta_i2c``, ``delta_c2i`` — Δ(t1, t2), Δ^{i→c}(t1, t2),
      Δ^{c→i}(t1, t2) for attempts 1 → 2 (``delta == delta_i2c - delta_c2i``
      exactly, see :func:`transition_rates`);
    * ``pairs`` — a list of ``{"from", "to", "delta", "delta_i2c",
      "delta_c2i", "i2c_count", "c2i_count", "ci95"}`` (1-based attempt
      numbers) for every consecutive pair ``t → t+1`` and, when ``K >= 3``,
      also for first → last (for ``K == 2`` the single pair already is
      first → last); empty for ``K == 1``;
    * ``edit_distance_ratio`` — mean :func:`edit_distance_ratio` between
      attempts 1 and 2; ``copy_rate`` — fraction of episodes whose attempt 2
      equals attempt 1 after ``.strip()``; ``edit_histogram`` —
      ``{"counts", "bin_edges"}`` over ``[0, 1]`` with ``edit_bins`` bins;
    * ``self_verification`` — per pair of ``pairs``, :func:`self_verification`'s rates (edit and
      answer-change rates when attempt t was wrong vs right, precision / recall of "changed the
      answer" as a detector of a wrong attempt t), each with its own ``ci95``;
    * ``parse_rate`` — per attempt, fraction with a non-``None`` parsed answer;
    * ``mean_length`` — per attempt, mean token count;
    * ``truncation_rate`` — per attempt, fraction truncated;
    * ``ci95`` — ``{key: [low, high]}`` for every rate above (per-attempt keys
      map to a list of ``[low, high]``, one per attempt; ``None`` where the
      value is ``None``);
    * ``ci_method`` — how the intervals were computed (below).

    Confidence intervals (level ``1 − alpha``, 95% by default): without
    ``group_ids``, proportions (accuracy, Δ^{i→c}, Δ^{c→i}, copy, parse and
    truncation rates) use the Wilson score interval, and Δ (the mean of the
    paired per-episode differences ``r_j − r_i``), the mean edit ratio and the
    mean length use a percentile bootstrap over episodes.  With
    ``group_ids``, samples of one problem are correlated, which a Wilson
    interval ignores (it would be too narrow), so *every* interval — the
    proportions included — is a cluster bootstrap that resamples problems with
    replacement and keeps all samples of each drawn problem.  Bootstraps use
    ``n_boot`` resamples and are deterministic given ``seed``.
    """
    r = _as_rewards(rewards)  # (N, K)
    n, k = r.shape
    if group_ids is not None:
        codes = _group_codes(group_ids, n)
        groups: list[int] | None = codes.tolist()
        n_groups: int | None = int(codes.max()) + 1
    else:
        groups, n_groups = None, None
    z = _z_for_alpha(alpha)
    ci = _CI(groups, n_boot=n_boot, seed=seed, alpha=alpha, z=z)

    out: dict[str, Any] = {"n": n, "attempts": k, "n_groups": n_groups}
    cis: dict[str, Any] = {}

    # Accuracy per attempt -------------------------------------------------
    out["accuracy"] = accuracy_per_attempt(r)
    cis["accuracy"] = [ci.proportion(r[:, t]) for t in range(k)]

    # Transitions -----------------------------------------------------------
    pair_idx = [(t, t + 1) for t in range(k - 1)]
    if k >= 3:
        pair_idx.append((0, k - 1))
    pairs = [_pair_summary(r, a, b, ci) for a, b in pair_idx]
    out["pairs"] = pairs
    for key in ("delta", "delta_i2c", "delta_c2i"):
        out[key] = pairs[0][key] if pairs else None
        cis[key] = pairs[0]["ci95"][key] if pairs else None

    # Edit distance between attempts 1 and 2 --------------------------------
    out["edit_distance_ratio"] = out["copy_rate"] = out["edit_histogram"] = None
    cis["edit_distance_ratio"] = cis["copy_rate"] = None
    if texts is not None:
        _check_nk(texts, n, k, "texts")
        tx = _as_texts(texts)
        if k >= 2:
            st = edit_stats(tx, 0, 1, bins=edit_bins)
            out["edit_distance_ratio"] = st["mean"]
            out["copy_rate"] = st["copy_rate"]
            out["edit_histogram"] = st["histogram"]
            cis["edit_distance_ratio"] = ci.mean(_edit_ratios(tx, 0, 1))
            cis["copy_rate"] = ci.proportion(_copies(tx, 0, 1))

    # Self-verification: does attempt t+1 know when attempt t was wrong? -------
    parsed_rows = None
    if parsed is not None:
        _check_nk(parsed, n, k, "parsed")
        parsed_rows = [list(row) for row in parsed]
    tx_rows = _as_texts(texts) if texts is not None else None
    out["self_verification"] = [self_verification(r, tx_rows, parsed_rows, a, b, ci) for a, b in pair_idx] \
        if (tx_rows is not None or parsed_rows is not None) else []

    # Parse rate ------------------------------------------------------------
    out["parse_rate"] = cis["parse_rate"] = None
    if parsed is not None:
        _check_nk(parsed, n, k, "parsed")
        ok = np.array([[a is not None for a in row] for row in parsed], dtype=np.int64)  # (N, K)
        out["parse_rate"] = [int(c) / n for c in ok.sum(axis=0)]
        cis["parse_rate"] = [ci.proportion(ok[:, t]) for t in range(k)]

    # Mean length -----------------------------------------------------------
    out["mean_length"] = cis["mean_length"] = None
    if lengths is not None:
        lens = np.asarray(lengths, dtype=np.float64)  # (N, K)
        if lens.shape != (n, k):
            raise SelfCorrectError(f"lengths has shape {lens.shape} but rewards has shape {(n, k)}")
        out["mean_length"] = [_num(x) for x in lens.mean(axis=0)]
        cis["mean_length"] = [ci.mean(lens[:, t]) for t in range(k)]

    # Truncation rate -------------------------------------------------------
    out["truncation_rate"] = cis["truncation_rate"] = None
    if truncated is not None:
        tr = np.asarray(truncated)
        if tr.shape != (n, k):
            raise SelfCorrectError(f"truncated has shape {tr.shape} but rewards has shape {(n, k)}")
        tr = tr.astype(bool).astype(np.int64)  # (N, K)
        out["truncation_rate"] = [int(c) / n for c in tr.sum(axis=0)]
        cis["truncation_rate"] = [ci.proportion(tr[:, t]) for t in range(k)]

    out["ci95"] = cis
    level = f"{100 * (1 - alpha):g}%"
    if groups is None:
        out["ci_method"] = {
            "level": level,
            "proportions": "wilson",
            "means": f"bootstrap over episodes ({n_boot} resamples, seed {seed})",
        }
    else:
        out["ci_method"] = {
            "level": level,
            "proportions": f"cluster bootstrap over problems ({n_boot} resamples, seed {seed})",
            "means": f"cluster bootstrap over problems ({n_boot} resamples, seed {seed})",
        }
    return out


# --------------------------------------------------------------------------- #
# Majority vote
# --------------------------------------------------------------------------- #


def majority_vote(
    answers: Sequence[T | None], same: Callable[[T, T], bool] = lambda a, b: a == b
) -> T | None:
    """The most common answer (self-consistency / majority voting).

    ``None`` answers (unparsable) are ignored; if every answer is ``None`` the
    result is ``None``.  Answers are clustered in order: each answer joins the
    first existing cluster whose *representative* (the first answer seen in
    that cluster) it is ``same`` as, otherwise it starts a new cluster.  The
    largest cluster wins and its representative is returned; on a tie, the
    cluster whose representative was seen earliest wins.  ``same`` need not
    be transitive (e.g. a numeric tolerance): only representatives are
    compared, so the result depends on order only through this rule.
    """
    reps: list[T] = []
    counts: list[int] = []
    for ans in answers:
        if ans is None:
            continue
        for idx, rep in enumerate(reps):
            if same(rep, ans):
                counts[idx] += 1
                break
        else:
            reps.append(ans)
            counts.append(1)
    if not reps:
        return None
    best = max(range(len(reps)), key=lambda idx: (counts[idx], -idx))
    return reps[best]
