"""Episodes keep exactly the sampled ids; masks select exactly the attempt tokens; the backend is exact."""

from __future__ import annotations

import pytest
import torch

from selfcorrect.errors import ConfigError
from selfcorrect.rollout import (ConversationBuilder, SamplingParams, TransformersBackend, collate,
                                 sample_episodes)
from selfcorrect.tasks.base import Problem, Task

from conftest import forward_shapes, lively_llama

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
    with forward_shapes(model) as calls:
        gens = backend.generate(prompts, SamplingParams(max_new_tokens=6))
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


def test_attempt_progress_counts_problems_per_attempt():
    """Generations arrive in batches that may straddle attempts (5 episodes, batches of 2 and 4): each
    attempt gets its own display counting its episodes, and the counts add up per attempt."""
    from selfcorrect.rollout import attempt_progress

    bars: dict[str, list[int]] = {}
    totals: dict[str, int] = {}

    def factory(description, total):
        bars[description], totals[description] = [], total
        return bars[description].append

    advance = attempt_progress(factory, "test evaluation", episodes=5, attempts=2)
    for n in (2, 4, 4):
        advance(n)
    assert bars == {"test evaluation, attempt 1/2": [2, 3], "test evaluation, attempt 2/2": [1, 4]}
    assert totals == {"test evaluation, attempt 1/2": 5, "test evaluation, attempt 2/2": 5}
    sampled = attempt_progress(factory, "generating", episodes=6, attempts=2, problems=3)
    sampled(6)
    assert bars["generating, attempt 1/2 (3 problems × 2 samples)"] == [6]


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
            if not a.reward:     # why it scored 0 (the toy verifier says nothing itself), and if it was cut off
                assert a.reason.startswith(("no parsable answer", "wrong answer")), a.reason
                assert a.reason.endswith("(cut off at the token limit)") == a.truncated
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


@pytest.mark.long
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


def _stop_tokens(model, tok, prompts, steps):
    """End-of-turn ids that make prompt ``i`` stop after ``steps[i]`` greedy tokens (mixed lengths)."""
    eos = tok.eos_token_id
    stops = set()
    for prompt, n in zip(prompts, steps):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=eos,
                             eos_token_id=eos)[0, len(prompt):].tolist()
        if len(ref) == n:
            stops.add(ref[-1])
    return {eos} | stops


def test_static_decode_matches_generate_across_bucket_changes(default_tokenizer):
    """The preallocated cache: same greedy tokens as ``model.generate``, decode steps only at bucket sizes."""
    tok = default_tokenizer
    model = lively_llama(tok)
    texts = ["hello", "a much longer prompt with many more tokens in it", "two words", "seven", "count to ten",
             "the end"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos_ids = _stop_tokens(model, tok, prompts, [2, 5, 9, 3, 14, 7])
    eos_list = sorted(eos_ids)
    static = TransformersBackend(model, tok, batch_size=6, eos_token_ids=eos_ids, decode="static")
    with forward_shapes(model) as calls:
        gens = static.generate(prompts, SamplingParams(max_new_tokens=14))
    decode_batches = [b for b, t in calls if t == 1]
    assert set(decode_batches) <= {1, 2, 4, 6} and len(set(decode_batches)) >= 2   # compacted, bucket sizes only
    lengths = set()
    for prompt, gen in zip(prompts, gens):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=14, do_sample=False, pad_token_id=tok.eos_token_id,
                             eos_token_id=eos_list)[0, len(prompt):].tolist()
        cut = next((i + 1 for i, t in enumerate(ref) if t in eos_ids), len(ref))
        assert gen.ids == ref[:cut]
        lengths.add(len(gen.ids))
    assert len(lengths) >= 3                                                         # rows really ended apart
    dynamic = TransformersBackend(model, tok, batch_size=6, eos_token_ids=eos_ids)
    for a, b in zip(gens, dynamic.generate(prompts, SamplingParams(max_new_tokens=14))):
        assert a.ids == b.ids and a.truncated == b.truncated
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


@pytest.mark.long
def test_static_decode_seeded_sampling_is_batch_invariant(tiny_model):
    """Per-row seeds: the static path samples what the dynamic path samples, at any batch size."""
    model, tok = tiny_model
    problems = [Problem(id=f"p{i}", question=f"Say {i} words", answer="x") for i in range(3)]
    task = _task(problems)
    builder = ConversationBuilder(tok, task.correction_instruction)
    hot = SamplingParams(temperature=1.0, max_new_tokens=8)
    runs = [sample_episodes(TransformersBackend(model, tok, batch_size=bs, decode=decode), builder, task, problems,
                            samples=2, attempts=2, params=hot, per_row_seed=5)
            for bs, decode in ((8, "dynamic"), (8, "static"), (3, "static"), (1, "static"))]
    ids = [[a.ids for e in run for a in e.attempts] for run in runs]
    assert ids[1] == ids[0] and ids[2] == ids[0] and ids[3] == ids[0]


def test_next_attempt_starts_from_the_previous_attempts_cache(tiny_model):
    """Attempt k+1 encodes only what follows attempt k; the sampled ids and their log-probs do not change."""
    model, tok = tiny_model
    problems = [Problem(id=f"p{i}", question=f"Say {i} words " * (i + 1), answer="x") for i in range(3)]
    task = _task(problems)
    builder = ConversationBuilder(tok, task.correction_instruction)
    greedy = SamplingParams(max_new_tokens=6)
    fresh = TransformersBackend(model, tok, batch_size=8)
    fresh.state_budget_bytes = 0                                # keeps no state: re-encodes every prompt
    reusing = TransformersBackend(model, tok, batch_size=8)
    expected = sample_episodes(fresh, builder, task, problems, samples=2, attempts=3, params=greedy)
    with forward_shapes(model) as calls:
        episodes = sample_episodes(reusing, builder, task, problems, samples=2, attempts=3, params=greedy)
    for got, want in zip(episodes, expected):
        assert got.tokens == want.tokens
        for a, b in zip(got.attempts, want.attempts):
            assert a.sample_logprobs == pytest.approx(b.sample_logprobs, abs=1e-5)
        assert got.decode_state is None                         # dropped after the last attempt
    prefills = [shape for shape in calls if shape[1] > 1]
    # attempt 1: shared prefix + remainders; attempts 2 and 3: the last sampled id + the turn suffix only
    later = prefills[-2:]
    longest_suffix = max(len(builder.turn_suffix(a.ids)) + 1 for ep in episodes for a in ep.attempts[:2])
    assert all(width <= longest_suffix for _, width in later)
    assert all(width < min(len(ep.tokens) for ep in episodes) // 2 for _, width in later)


def test_a_state_is_not_reused_after_the_weights_change(tiny_model_dir):
    """An optimizer step between attempts makes the stored cache stale: it is recomputed, not reused."""
    from selfcorrect.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir), dtype="float32"), load_tokenizer(str(tiny_model_dir))
    prompts = [tok("count with me", add_special_tokens=False)["input_ids"]]
    backend = TransformersBackend(model, tok, batch_size=2)
    first = backend.generate(prompts, SamplingParams(max_new_tokens=4), keep_state=True)[0]
    assert first.state is not None
    follow = [prompts[0] + first.ids + tok(" again", add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)                                          # an in-place update, like optimizer.step()
    assert backend._usable_states(follow, [first.state]) is None
    stale = backend.generate(follow, SamplingParams(max_new_tokens=4), states=[first.state])[0]
    assert stale.ids == backend.generate(follow, SamplingParams(max_new_tokens=4))[0].ids


def test_decode_modes_refuse_what_they_cannot_do(tiny_model):
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM

    model, tok = tiny_model
    with pytest.raises(ConfigError, match="decode must be one of"):
        TransformersBackend(model, tok, decode="fast")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        TransformersBackend(model, tok, decode="graphs")
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                               sliding_window=4))
    with pytest.raises(ConfigError, match="full-attention models only"):
        TransformersBackend(gemma, tok, decode="static")


def test_rows_past_the_state_budget_are_encoded_in_full(tiny_model):
    """The budget keeps states for some rows only: a later batch with none of them prefills as usual."""
    model, tok = tiny_model
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["count with me", "a much longer prompt here"]]
    backend = TransformersBackend(model, tok, batch_size=1)
    first = backend.generate(prompts, SamplingParams(max_new_tokens=3), keep_state=True)
    one_row = (2 * model.config.num_hidden_layers * model.config.num_key_value_heads *
        (model.config.hidden_size // model.config.num_attention_heads) * 4 * (len(prompts[0]) + 2))
    backend.state_budget_bytes = one_row                       # room for the shorter row's state only
    first = backend.generate(prompts, SamplingParams(max_new_tokens=3), keep_state=True)
    assert first[0].state is not None and first[1].state is None
    follow = [p + g.ids + tok(" again", add_special_tokens=False)["input_ids"] for p, g in zip(prompts, first)]
    resumed = backend.generate(follow, SamplingParams(max_new_tokens=3), states=[g.state for g in first])
    fresh = TransformersBackend(model, tok, batch_size=1).generate(follow, SamplingParams(max_new_tokens=3))
    assert [g.ids for g in resumed] == [g.ids for g in fresh]
