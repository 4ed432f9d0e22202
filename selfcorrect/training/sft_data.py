"""Datasets of the paper's SFT baselines, built from episodes (the loss is :func:`selfcorrect.algorithms.sft.sft_loss`).

* **STaR** (:func:`star_filter`): sample K-attempt traces from the current
  model and keep those whose attempt 1 is wrong and attempt 2 right (``D``);
  ``D+`` also keeps right → right traces.
* **Pair-SFT** (:func:`pair_episodes`): from independent first attempts of the
  base model, pair an incorrect response with a correct one for the same
  problem, as ``(x1, y_wrong, instruction) → y_right`` (``D``); ``D+`` also
  pairs two correct responses.

Each SFT phase of :mod:`.methods` names its builder (``Phase.dataset``): the function that
turns its collected traces into training episodes.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..rollout.episodes import ConversationBuilder, Episode

KEEP = ("D", "D+")


def star_filter(episodes: Sequence[Episode], keep: str = "D") -> list[Episode]:
    """Episodes whose attempt 1 is wrong and attempt 2 right (``D``); ``D+`` adds right → right."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    out = []
    for ep in episodes:
        r1, r2 = ep.attempts[0].reward, ep.attempts[1].reward
        if r2 == 1.0 and (r1 == 0.0 or (keep == "D+" and r1 == 1.0)):
            out.append(ep)
    return out


def pair_episodes(builder: ConversationBuilder, first_attempts: Sequence[Episode], prompts: dict[str, str],
                  keep: str = "D") -> list[Episode]:
    """Pair-SFT episodes from single-attempt episodes of the base model.

    For each problem, every incorrect attempt is paired with a correct one
    (correct attempts reused round-robin), giving ``(x1, y_wrong, p) → y_right``;
    with ``D+`` every correct attempt is also paired with a *different* correct
    one (``(x1, y_right, p) → y_right'``) when the problem has two.  ``prompts``
    maps problem id → attempt-1 user text.
    """
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    by_problem: dict[str, list[Episode]] = {}
    for ep in first_attempts:
        by_problem.setdefault(ep.problem.id, []).append(ep)
    out = []
    for pid, group in by_problem.items():
        right = [ep for ep in group if ep.attempts[0].reward == 1.0]
        wrong = [ep for ep in group if ep.attempts[0].reward == 0.0]
        if not right:
            continue
        pairs = [(w, right[i % len(right)]) for i, w in enumerate(wrong)]
        if keep == "D+" and len(right) >= 2:
            pairs += [(r, right[(i + 1) % len(right)]) for i, r in enumerate(right)]
        for first, second in pairs:
            ep = builder.episode_from_ids(first.problem, prompts[pid],
                                          [first.attempts[0].ids, second.attempts[0].ids],
                                          truncated=[first.attempts[0].truncated, second.attempts[0].truncated],
                                          sample=first.sample)
            for new, old in zip(ep.attempts, (first.attempts[0], second.attempts[0])):
                new.reward, new.answer = old.reward, old.answer
            out.append(ep)
    return out


def star_dataset(traces: Sequence[Episode], problems, task, builder: ConversationBuilder, keep: str) -> list[Episode]:
    """STaR: the current model's own K-attempt traces, filtered."""
    return star_filter(traces, keep)


def pair_dataset(traces: Sequence[Episode], problems, task, builder: ConversationBuilder, keep: str) -> list[Episode]:
    """Pair-SFT: independent first attempts of the (base) model, paired."""
    prompts = {p.id: task.first_prompt(p) for p in problems}
    return pair_episodes(builder, traces, prompts, keep)


