"""Rollouts: ``n`` samples × ``K`` attempts per problem, generated attempt by attempt in batches.

Attempt ``k`` of every episode is generated in one backend call (batched
across problems and samples), then scored by the task's verifier, then the
turn suffix with the correction instruction is appended and attempt ``k+1``
follows.  Scoring happens per attempt so a caller can stop early or inspect
attempt 1 before attempt 2 exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError
from ..tasks.base import Problem, Task
from .backends import GenerationBackend, SamplingParams
from .episodes import ConversationBuilder, Episode

Progress = Callable[[int], None]


class ProblemStream:
    """Problems in a fresh seeded permutation each epoch; its position is part of the checkpoint."""

    def __init__(self, n: int, seed: int, epoch: int = 0, position: int = 0):
        self.n, self.seed, self.epoch, self.position = n, seed, epoch, position

    def _order(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            order = self._order()
            take = min(count - len(out), self.n - self.position)
            out.extend(order[self.position:self.position + take])
            self.position += take
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


def draw_indices(problems: Sequence[Problem]) -> list[int]:
    """How many times each problem already occurred earlier in ``problems`` (0 for a first draw)."""
    seen: dict[str, int] = {}
    draws = []
    for problem in problems:
        draws.append(seen.get(problem.id, 0))
        seen[problem.id] = draws[-1] + 1
    return draws


def new_episodes(builder: ConversationBuilder, task: Task, problems: Sequence[Problem], samples: int,
                 draws: Sequence[int] | None = None) -> list[Episode]:
    """``samples`` empty episodes per problem (problem-major order), each holding the attempt-1 prompt.

    A problem drawn ``d`` times before in the same batch (``draws``, default :func:`draw_indices`)
    gets sample indices ``d·samples .. d·samples + samples − 1``: its own seeds, its own episodes.
    """
    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples per problem must be an integer >= 1, got {samples!r}")
    draws = draw_indices(problems) if draws is None else list(draws)
    episodes = []
    for problem, draw in zip(problems, draws, strict=True):
        prompt = builder.first_prompt(task.first_prompt(problem))
        episodes.extend(builder.new_episode(problem, draw * samples + s, prompt) for s in range(samples))
    return episodes


def row_seed(base: int, problem_id: str, sample: int, attempt: int) -> int:
    """A sampling seed for one (problem, sample, attempt), the same in every process and batch."""
    digest = hashlib.sha256(f"{base}|{problem_id}|{sample}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def extend_episodes(backend: GenerationBackend, builder: ConversationBuilder, task: Task,
                    episodes: Sequence[Episode], params: SamplingParams, progress: Progress | None = None,
                    seed: int | None = None, more: bool = False) -> None:
    """Generate and score one more attempt for every episode (in place).

    With ``seed``, every row samples from its own generator seeded by
    :func:`row_seed`, so an episode is the same whatever batch or process it
    lands in; without it, sampling uses torch's global generator.  ``more``: another
    attempt follows, so keep each conversation's KV cache (``Episode.decode_state``) for it;
    the attempt after starts from that cache instead of re-encoding the conversation.
    """
    contexts = [builder.open_next_turn(ep) if ep.attempts else ep.tokens for ep in episodes]
    seeds = None if seed is None else [row_seed(seed, ep.problem.id, ep.sample, len(ep.attempts))
                                       for ep in episodes]
    generations = backend.generate(contexts, params, progress, seeds=seeds,
                                   states=[ep.decode_state for ep in episodes], keep_state=more)
    for ep, g in zip(episodes, generations):
        ep.decode_state = g.state if more else None
    attempts = [builder.append_attempt(ep, g.ids, g.truncated, g.logprobs) for ep, g in zip(episodes, generations)]
    verdicts = task.verdicts([a.text for a in attempts], [ep.problem for ep in episodes])
    for attempt, verdict in zip(attempts, verdicts):
        attempt.reward = float(verdict.reward)
        attempt.reason = verdict.reason
        if attempt.truncated and verdict.reward <= 0:
            attempt.reason += " (cut off at the token limit)"
        attempt.answer = task.extract_answer(attempt.text)
        attempt.formatted = None if task.follows_format is None else bool(task.follows_format(attempt.text))
    if task.lenient_verify is not None:
        for ep, attempt in zip(episodes, attempts):
            attempt.lenient = float(task.lenient_verify(attempt.text, ep.problem))


ProgressFactory = Callable[[str, int], Callable[[int], None]]
"""``(description, total) -> advance(n)``: one progress display (a rich bar, or plain lines off a terminal)."""


def attempt_progress(factory: ProgressFactory, description: str, episodes: int, attempts: int,
                     problems: int | None = None) -> Callable[[int], None]:
    """An ``advance(n)`` for rollouts that finish attempt 1 of every episode, then attempt 2, ...: it counts
    finished generations into one display per attempt, ``"{description}, attempt k/K"``, each counting
    ``episodes`` — problems, what a user counts, when there is one sample per problem (``problems`` given and
    different: the description says ``N problems × S samples``)."""
    unit = "" if problems in (None, episodes) else f" ({problems} problems × {episodes // problems} samples)"
    shown: list[Callable[[int], None]] = []
    done = [0]

    def advance(n: int) -> None:
        while n > 0:
            attempt, within = divmod(done[0], episodes)
            if attempt >= len(shown):
                shown.append(factory(f"{description}, attempt {attempt + 1}/{attempts}{unit}", episodes))
            step = min(n, episodes - within)
            shown[attempt](step)
            done[0] += step
            n -= step

    return advance


def sample_episodes(backend: GenerationBackend, builder: ConversationBuilder, task: Task,
                    problems: Sequence[Problem], *, samples: int = 1, attempts: int = 2,
                    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
                    seed: int | None = None, progress: Progress | None = None,
                    per_row_seed: int | None = None, draws: Sequence[int] | None = None) -> list[Episode]:
    """Roll out ``samples`` episodes of ``attempts`` attempts for each problem.

    ``params`` may be one :class:`SamplingParams` for all attempts or one per
    attempt.  ``seed`` seeds torch's global generator first (sampling is then
    reproducible for a fixed batch composition); ``per_row_seed`` instead gives
    every (problem, sample, attempt) its own generator (see :func:`extend_episodes`),
    which makes episodes independent of batching.  ``draws`` numbers repeated draws of a problem
    (see :func:`new_episodes`; pass it when ``problems`` is one process's share of a larger list,
    so that every process numbers them alike).  ``progress(n)`` receives
    counts of finished generations (``len(problems) * samples * attempts`` in total).
    """
    if not isinstance(attempts, int) or attempts < 1:
        raise ConfigError(f"attempts must be an integer >= 1, got {attempts!r}")
    per_attempt = [params] * attempts if isinstance(params, SamplingParams) else list(params)
    if len(per_attempt) != attempts:
        raise ConfigError(f"got {len(per_attempt)} sampling settings for {attempts} attempts")
    if seed is not None:
        torch.manual_seed(seed)
    episodes = new_episodes(builder, task, problems, samples, draws)
    for k in range(attempts):
        extend_episodes(backend, builder, task, episodes, per_attempt[k], progress, seed=per_row_seed,
                        more=k + 1 < attempts)
    return episodes


def sample_with_offline_first_attempts(backend: GenerationBackend, base_backend: GenerationBackend,
                                       builder: ConversationBuilder, task: Task, problems: Sequence[Problem],
                                       draws: Sequence[int], offline: Sequence[bool], *, samples: int,
                                       attempts: int, params: SamplingParams, seed: int) -> list[Episode]:
    """:func:`sample_episodes` (per-row seeds) where the first attempts of the problems flagged ``offline``
    come from ``base_backend`` (a frozen model: paper §5.3's first attempts from the base model) and every
    other attempt from ``backend``.  Offline attempts are marked ``offline`` and carry no sampling
    log-probs (they are not the policy's: nothing to check them against)."""
    episodes = new_episodes(builder, task, problems, samples, draws)
    flags = [flag for flag in offline for _ in range(samples)]                        # per episode
    base = [ep for ep, flag in zip(episodes, flags) if flag]
    extend_episodes(base_backend, builder, task, base, params, seed=seed)
    extend_episodes(backend, builder, task, [ep for ep, flag in zip(episodes, flags) if not flag], params,
                    seed=seed, more=attempts > 1)
    for ep in base:
        ep.attempts[0].offline = True
        ep.attempts[0].sample_logprobs = None
    for k in range(1, attempts):
        extend_episodes(backend, builder, task, episodes, params, seed=seed, more=k + 1 < attempts)
    return episodes
