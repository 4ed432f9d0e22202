"""Episodes keep exactly the sampled ids; masks select exactly the attempt tokens; the backend is exact."""

from __future__ import annotations

import pytest
import torch

from selfcorrect.errors import ConfigError
from selfcorrect.rollout import (ConversationBuilder, SamplingParams, TransformersBackend, collate,
                                 sample_episodes)
from selfcorrect.tasks.base import Problem, Task

INSTRUCTION = "There might be an error. Please fix it."


def _task(problems: list[Problem]) -> Task:
    return Task(
        name="toy",
        problems=problems,
        format_prompt=lambda p: p.question,
        correction_instruction=INSTRUCTION,
        verify=lambda text, p: float(p.answer in text),
        extract_answer=lambda text: text.strip() or None,
    )


@pytest.fixture()
def builder(default_tokenizer):
    return ConversationBuilder(default_tokenizer, INSTRUCTION)


def test_incremental_tokens_equal_full_chat_template(builder, default_tokenizer):
    """Appending ids turn by turn reproduces the chat template of the whole conversation, K = 3."""
    tok = default_tokenizer
    problem = Problem(id="p", question="What is 2 + 3?", answer="5")
    texts = ["2 + 3 = 6", "Sorry, 2 + 3 = 5.", "The final answer is 5."]
    episode = builder.episode_from_ids(problem, problem.question, [builder.encode_attempt(t) for t in texts])

    messages = [{"role": "user", "content": problem.question}]
    for k, text in enumerate(texts):
        if k:
            messages.append({"role": "user", "content": INSTRUCTION})
        messages.append({"role": "assistant", "content": text})
    full = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    n = len(episode.tokens)
    assert episode.tokens == full[:n]
    assert tok.decode(full[n:]) == "\n"  # the template's newline after the last <|im_end|>
    assert [a.text for a in episode.attempts] == texts


def test_attempt_ids_are_stored_verbatim_and_masks_select_them(builder, default_tokenizer):
    eos = default_tokenizer.eos_token_id
    problem = Problem(id="p", question="q?", answer="1")
    # Deliberately non-canonical ids (decode→encode would merge them): they must survive untouched.
    weird = default_tokenizer("1", add_special_tokens=False)["input_ids"] * 3 + [eos]
    second = default_tokenizer("one", add_special_tokens=False)["input_ids"] + [eos]
    episode = builder.episode_from_ids(problem, "q?", [weird, second])
    batch = collate([episode, builder.episode_from_ids(problem, "q?", [second])], pad_token_id=eos)

    assert batch["attempt_mask"].shape == (2, 2, len(episode.tokens))
    for k, ids in enumerate([weird, second]):
        mask = batch["attempt_mask"][0, k]
        assert batch["input_ids"][0][mask].tolist() == ids
        # exactly the attempt's span, contiguous
        positions = mask.nonzero().squeeze(-1).tolist()
        assert positions == list(range(episode.attempts[k].start, episode.attempts[k].end))
    assert not (batch["attempt_mask"][0, 0] & batch["attempt_mask"][0, 1]).any()
    # the shorter episode: one attempt, padding and no second-attempt mask
    short = len(builder.episode_from_ids(problem, "q?", [second]).tokens)
    assert batch["attention_mask"][1].tolist() == [1] * short + [0] * (len(episode.tokens) - short)
    assert not batch["attempt_mask"][1, 1].any()
    assert batch["attempt_mask"][1, 0].sum() == len(second)


def test_truncated_attempt_gets_the_templates_closing_tokens(builder, default_tokenizer):
    eos = default_tokenizer.eos_token_id
    problem = Problem(id="p", question="q?", answer="1")
    cut = default_tokenizer("I am still thinking", add_special_tokens=False)["input_ids"]
    episode = builder.episode_from_ids(problem, "q?", [cut, [eos]], truncated=[True, False])
    first, second = episode.attempts
    assert first.truncated and first.ids == cut
    between = episode.tokens[first.end:second.start]
    assert between[0] == eos  # the turn is closed although the model never emitted <|im_end|>
    text = default_tokenizer.decode(between)
    assert INSTRUCTION in text and text.endswith("<|im_start|>assistant\n")
    # an attempt that did end with <|im_end|> is not closed twice
    episode2 = builder.episode_from_ids(problem, "q?", [cut + [eos], [eos]])
    between2 = episode2.tokens[episode2.attempts[0].end:episode2.attempts[1].start]
    assert between2 == between[1:]


def test_backend_greedy_matches_hf_generate_with_mixed_lengths(tiny_model):
    """Left padding, position ids and dropping finished rows must not change a single token."""
    model, tok = tiny_model
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in
               ["hello", "a much longer prompt with many more tokens in it", "two words"]]
    eos = tok.eos_token_id
    # Make row 0 stop early by declaring its 3rd greedy token an end-of-turn token.
    ref0 = model.generate(torch.tensor([prompts[0]]), max_new_tokens=12, do_sample=False,
                          pad_token_id=eos, eos_token_id=eos)[0, len(prompts[0]):].tolist()
    stop = ref0[2]
    backend = TransformersBackend(model, tok, batch_size=8, eos_token_ids={eos, stop})
    gens = backend.generate(prompts, SamplingParams(max_new_tokens=12))
    for prompt, gen in zip(prompts, gens):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=eos,
                             eos_token_id=[eos, stop])[0, len(prompt):].tolist()
        cut = next((i + 1 for i, t in enumerate(ref) if t in (eos, stop)), len(ref))
        assert gen.ids == ref[:cut]
        assert gen.truncated == (cut == 12 and ref[11] not in (eos, stop))
    assert gens[0].ids[-1] == stop and not gens[0].truncated and len(gens[0].ids) <= 3


def test_shared_prefix_cache_gives_the_same_tokens(tiny_model):
    """Prompts sharing a long prefix: one prefix pass + repeated KV cache must not change greedy outputs."""
    model, tok = tiny_model
    prefix = tok("You are a careful assistant. Solve the problem below and answer.", add_special_tokens=False)["input_ids"]
    prompts = [prefix + tok(t, add_special_tokens=False)["input_ids"] for t in ["2+2", "what is 13 + 29 exactly", "7"]]
    prompts.append(list(prefix))                       # a prompt that *is* the shared prefix
    eos = tok.eos_token_id
    backend = TransformersBackend(model, tok, batch_size=8)
    calls = []
    original = model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    model.forward = spy
    try:
        gens = backend.generate(prompts, SamplingParams(max_new_tokens=6))
    finally:
        del model.forward
    assert calls[0] == (1, len(prefix) - 1)            # the shared prefix ran once, at batch size 1
    for prompt, gen in zip(prompts, gens):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=eos,
                             eos_token_id=eos)[0, len(prompt):].tolist()
        assert gen.ids == ref[: len(gen.ids)] and len(gen.ids) == len(ref[: ref.index(eos) + 1] if eos in ref else ref)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(tiny_model):
    model, tok = tiny_model
    backend = TransformersBackend(model, tok, batch_size=4)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["one", "two three", "four"]]
    hot = SamplingParams(temperature=1.0, max_new_tokens=10)
    torch.manual_seed(3)
    a = backend.generate(prompts, hot)
    torch.manual_seed(3)
    b = backend.generate(prompts, hot)
    assert [g.ids for g in a] == [g.ids for g in b]
    greedy = backend.generate(prompts, SamplingParams(max_new_tokens=10))
    top1 = backend.generate(prompts, SamplingParams(temperature=0.7, top_k=1, max_new_tokens=10))
    assert [g.ids for g in top1] == [g.ids for g in greedy]


def test_sample_episodes_k3_shapes_rewards_and_exact_ids(tiny_model):
    model, tok = tiny_model
    problems = [Problem(id=f"p{i}", question=f"Say {i}", answer=str(i)) for i in range(3)]
    task = _task(problems)
    builder = ConversationBuilder(tok, task.correction_instruction)
    backend = TransformersBackend(model, tok, batch_size=2)
    seen = []
    episodes = sample_episodes(backend, builder, task, problems, samples=2, attempts=3,
                               params=SamplingParams(temperature=1.0, max_new_tokens=5), seed=0,
                               progress=seen.append)
    assert sum(seen) == 3 * 2 * 3
    assert [(e.problem.id, e.sample) for e in episodes] == [(p.id, s) for p in problems for s in range(2)]
    batch = collate(episodes, pad_token_id=tok.pad_token_id)
    for row, ep in enumerate(episodes):
        assert len(ep.attempts) == 3
        assert ep.tokens[:ep.prompt_length] == builder.first_prompt(ep.problem.question)
        for k, a in enumerate(ep.attempts):
            assert ep.tokens[a.start:a.end] == a.ids
            assert batch["input_ids"][row][batch["attempt_mask"][row, k]].tolist() == a.ids
            assert 1 <= len(a.ids) <= 5
            assert a.truncated == (a.ids[-1] not in backend.eos_token_ids)
            assert a.reward == float(ep.problem.answer in a.text)
            assert a.text == tok.decode(a.ids, skip_special_tokens=True).strip()
        for k in (1, 2):  # attempt k starts right after its turn suffix
            suffix = builder.turn_suffix(ep.attempts[k - 1].ids)
            assert ep.tokens[ep.attempts[k - 1].end:ep.attempts[k].start] == suffix


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                                    dict(max_new_tokens=0), dict(temperature="hot")])
def test_bad_sampling_params(kwargs):
    with pytest.raises(ConfigError):
        SamplingParams(**kwargs)


def test_bad_attempts_and_samples(tiny_model):
    model, tok = tiny_model
    task = _task([Problem(id="a", question="q", answer="1")])
    builder = ConversationBuilder(tok, INSTRUCTION)
    backend = TransformersBackend(model, tok)
    with pytest.raises(ConfigError, match="attempts"):
        sample_episodes(backend, builder, task, task.problems, attempts=0)
    with pytest.raises(ConfigError, match="samples"):
        sample_episodes(backend, builder, task, task.problems, samples=0)
    with pytest.raises(ConfigError, match="batch size"):
        TransformersBackend(model, tok, batch_size=0)


def test_per_row_seeds_make_samples_independent_of_batching(tiny_model):
    """The same (problem, sample, attempt) samples the same tokens alone, in a batch, or in another batch size."""
    model, tok = tiny_model
    problems = [Problem(id=f"p{i}", question=f"Say {i} words", answer="x") for i in range(3)]
    task = _task(problems)
    builder = ConversationBuilder(tok, task.correction_instruction)
    hot = SamplingParams(temperature=1.0, max_new_tokens=6)
    together = sample_episodes(TransformersBackend(model, tok, batch_size=8), builder, task, problems, samples=2,
                               attempts=2, params=hot, per_row_seed=7)
    alone = [sample_episodes(TransformersBackend(model, tok, batch_size=1), builder, task, [p], samples=2,
                             attempts=2, params=hot, per_row_seed=7) for p in problems]
    assert [a.ids for e in together for a in e.attempts] == [a.ids for es in alone for e in es for a in e.attempts]
    other = sample_episodes(TransformersBackend(model, tok), builder, task, problems, samples=2, attempts=2,
                            params=hot, per_row_seed=8)
    assert [a.ids for e in together for a in e.attempts] != [a.ids for e in other for a in e.attempts]
