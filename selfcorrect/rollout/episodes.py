"""Multi-attempt episodes as token ids: what was sampled, exactly, and where it sits.

An episode is one conversation with ``K`` attempts::

    [user: problem prompt] [assistant: attempt 1] [user: correction instruction] [assistant: attempt 2] ...

It is kept as **one token sequence** (``Episode.tokens``) built by appending
ids, never by decoding and re-encoding text:

* ``tokens[:attempts[0].start]`` is the chat-template rendering of the first
  user turn with the generation prompt (``<|im_start|>assistant\\n`` for
  ChatML);
* ``attempts[k].ids`` are the ids the sampler produced for attempt ``k``
  (including the end-of-turn token when the model emitted one), stored at
  ``tokens[attempts[k].start : attempts[k].end]``;
* between two attempts sits a fixed *turn suffix*: whatever the template puts
  after an assistant message, the correction-instruction user turn, and the
  next generation prompt.

The trainer scores all attempts with one forward pass over ``tokens`` and the
per-attempt masks of :func:`collate`; because the ids are the sampled ids,
the log-probabilities it computes are those of the very tokens the policy
produced (no decode→re-encode drift).

The turn suffix is derived from the tokenizer's own chat template by
rendering a conversation with a placeholder answer with and without the
extra user turn and taking the difference (see :class:`ConversationBuilder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import SelfCorrectError
from ..tasks.base import Problem

_PLACEHOLDER = "SELFCORRECT-ATTEMPT-PLACEHOLDER"


@dataclass
class Attempt:
    """One sampled attempt inside an episode."""

    ids: list[int]
    """The sampled token ids, end-of-turn token included when the model emitted it."""
    start: int
    """Offset of ``ids[0]`` in :attr:`Episode.tokens`."""
    text: str
    """``ids`` decoded without special tokens (what the verifier reads)."""
    truncated: bool
    """True when the attempt hit the token limit before an end-of-turn token."""
    reward: float | None = None
    """Verifier reward (1.0 right, 0.0 wrong); ``None`` until scored."""
    answer: str | None = None
    """Final answer read from ``text`` (``None``: unparsable)."""
    reason: str = ""
    """Why the verifier gave 0, where it says (code tasks: the failing assert, timeout, ...)."""
    formatted: bool | None = None
    """Whether ``text`` states its answer in the instructed form (``Task.follows_format``; ``None`` when the
    task has no such form)."""
    lenient: float | None = None
    """The reward under the task's lenient reader (``Task.lenient_verify``: the answer whatever its form), or
    ``None`` where the task has none; tells an answer correction from a form repair, never trained on."""
    offline: bool = False
    """Sampled by another model than the policy (the base model's first attempts of ``base_first_attempts``):
    a prompt for the next attempt, never trained on."""
    sample_logprobs: list[float] | None = None
    """The backend's log-prob of each of ``ids`` under the distribution it sampled from (``None``
    when the backend did not report them); checked against the trainer's own log-probs."""

    @property
    def end(self) -> int:
        """One past the last attempt token in :attr:`Episode.tokens`."""
        return self.start + len(self.ids)


@dataclass
class Episode:
    """A problem, one sample index, and the token sequence of all its attempts so far."""

    problem: Problem
    sample: int
    """Which of the ``n`` samples of this problem (0-based)."""
    tokens: list[int]
    """Prompt, attempts and turn suffixes, concatenated (see module docstring)."""
    attempts: list[Attempt] = field(default_factory=list)
    decode_state: object | None = field(default=None, repr=False, compare=False)
    """The backend's KV cache of the conversation so far, while a next attempt is to follow (see
    :func:`~selfcorrect.rollout.extend_episodes`); dropped after the last one."""

    @property
    def prompt_length(self) -> int:
        """Number of tokens before attempt 1."""
        return self.attempts[0].start if self.attempts else len(self.tokens)

    def attempt_mask(self, k: int) -> list[bool]:
        """``len(tokens)`` booleans, True exactly at attempt ``k``'s sampled tokens."""
        a = self.attempts[k]
        return [a.start <= i < a.end for i in range(len(self.tokens))]

    @property
    def rewards(self) -> list[float | None]:
        return [a.reward for a in self.attempts]

    @property
    def texts(self) -> list[str]:
        return [a.text for a in self.attempts]


class ConversationBuilder:
    """Builds episode token sequences from a tokenizer's chat template.

    ``first_prompt(text)`` gives the ids of the first user turn plus the
    generation prompt; ``append_attempt(episode, ids)`` appends sampled ids;
    ``open_next_turn(episode)`` appends the turn suffix that closes the
    assistant turn, adds the correction instruction and opens the next
    assistant turn.
    """

    def __init__(self, tokenizer, correction_instruction: str, system_prompt: str | None = None):
        if getattr(tokenizer, "chat_template", None) is None:
            raise SelfCorrectError("the tokenizer has no chat template; multi-turn episodes need one")
        self.tokenizer = tokenizer
        self.correction_instruction = correction_instruction
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.eos_token_ids = end_of_turn_ids(tokenizer)
        self._tail_text, self._next_turn_text = self._template_pieces()

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            self.system + messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode(self, text: str) -> list[int]:
        # The rendered template already contains every special token it wants.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _template_pieces(self) -> tuple[str, str]:
        """(text after an assistant message's content, text of the next user turn + generation prompt)."""
        history = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _PLACEHOLDER}]
        closed = self._render(history, add_generation_prompt=False)
        extended = self._render(
            history + [{"role": "user", "content": self.correction_instruction}], add_generation_prompt=True
        )
        if not extended.startswith(closed) or _PLACEHOLDER not in closed:
            raise SelfCorrectError(
                "the chat template rewrites earlier turns when a turn is added; "
                "selfcorrect cannot build multi-turn episodes by appending tokens with this template"
            )
        tail = closed[closed.rindex(_PLACEHOLDER) + len(_PLACEHOLDER):]
        return tail, extended[len(closed):]

    def first_prompt(self, user_text: str) -> list[int]:
        """Ids of the first user turn followed by the assistant generation prompt."""
        return self._encode(self._render([{"role": "user", "content": user_text}], add_generation_prompt=True))

    def turn_suffix(self, previous_ids: Sequence[int]) -> list[int]:
        """Ids placed after an attempt that ended with ``previous_ids``.

        If the attempt ended with an end-of-turn token that the template also
        writes after a message, that token is not repeated; an attempt cut off
        by the length limit gets the template's full closing text.
        """
        tail = self._tail_text
        if previous_ids and previous_ids[-1] in self.eos_token_ids:
            eos_text = self.tokenizer.decode([previous_ids[-1]])
            if tail.startswith(eos_text):
                tail = tail[len(eos_text):]
        return self._encode(tail + self._next_turn_text)

    def new_episode(self, problem: Problem, sample: int, prompt_ids: Sequence[int]) -> Episode:
        return Episode(problem=problem, sample=sample, tokens=list(prompt_ids))

    def open_next_turn(self, episode: Episode) -> list[int]:
        """Append the turn suffix after the last attempt; return the context for the next attempt."""
        episode.tokens.extend(self.turn_suffix(episode.attempts[-1].ids))
        return episode.tokens

    def append_attempt(self, episode: Episode, ids: Sequence[int], truncated: bool,
                       logprobs: Sequence[float] | None = None) -> Attempt:
        """Record sampled ``ids`` (and the sampler's log-probs of them, if known) as the next attempt."""
        attempt = Attempt(
            ids=list(ids),
            start=len(episode.tokens),
            text=self.tokenizer.decode(list(ids), skip_special_tokens=True).strip(),
            truncated=truncated,
            sample_logprobs=list(logprobs) if logprobs is not None and len(logprobs) == len(ids) else None,
        )
        episode.tokens.extend(attempt.ids)
        episode.attempts.append(attempt)
        return attempt

    def episode_from_ids(self, problem: Problem, prompt_text: str, attempt_ids: Sequence[Sequence[int]],
                         truncated: Sequence[bool] | None = None, sample: int = 0) -> Episode:
        """An episode from given attempt ids (for SFT baselines that splice attempts together)."""
        episode = self.new_episode(problem, sample, self.first_prompt(prompt_text))
        for k, ids in enumerate(attempt_ids):
            if k:
                self.open_next_turn(episode)
            self.append_attempt(episode, ids, bool(truncated[k]) if truncated is not None else False)
        return episode

    def encode_attempt(self, text: str) -> list[int]:
        """Ids for a written (not sampled) attempt text, closed with the end-of-turn token."""
        ids = self._encode(text)
        eos = self.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None else [])


def end_of_turn_ids(tokenizer, generation_config=None) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's eos plus the model's generation eos."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    if not ids:
        raise SelfCorrectError("the tokenizer has no eos token: cannot tell where an attempt ends")
    return ids


def collate(episodes: Sequence[Episode], pad_token_id: int, num_attempts: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded training batch of episodes.

    Returns

    * ``input_ids``      — ``[B, T]`` long, ``T`` = longest episode;
    * ``attention_mask`` — ``[B, T]`` long, 1 on real tokens;
    * ``attempt_mask``   — ``[B, K, T]`` bool, True exactly on attempt ``k``'s
      sampled ids (the *labels*: the log-prob of ``input_ids[b, t]`` comes
      from the logits at position ``t - 1``).
    """
    if not episodes:
        raise ValueError("collate needs at least one episode")
    k_max = num_attempts or max(len(e.attempts) for e in episodes)
    t_max = max(len(e.tokens) for e in episodes)
    b = len(episodes)
    input_ids = torch.full((b, t_max), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, t_max), dtype=torch.long)
    attempt_mask = torch.zeros((b, k_max, t_max), dtype=torch.bool)
    for row, ep in enumerate(episodes):
        n = len(ep.tokens)
        input_ids[row, :n] = torch.tensor(ep.tokens, dtype=torch.long)
        attention_mask[row, :n] = 1
        for k, a in enumerate(ep.attempts[:k_max]):
            attempt_mask[row, k, a.start:a.end] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "attempt_mask": attempt_mask}
