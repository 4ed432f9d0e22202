"""Scoring shared prefixes once gives the log-probs and gradients of scoring every row in full."""

from __future__ import annotations

import pytest
import torch

from selfcorrect.logprobs import length_buckets, shared_prefixes, token_logprobs

from conftest import forward_shapes


def _batch(rows: list[list[int]], labels_from: list[int]):
    """Right-padded ``input_ids``, ``attention_mask`` and a label mask that is True from ``labels_from[i]`` on."""
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.zeros_like(ids, dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, labels_from)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        labels[i, start:len(row)] = True
    return ids, mask, labels


def test_groups_are_the_split_that_saves_the_most_tokens():
    system = [1] * 10
    rows = [system + [2] * 20 + [9, 9], system + [2] * 20 + [8, 8],      # one problem, two samples
            system + [3] * 20 + [7], system + [3] * 20 + [6],            # another
            system + [4, 5, 6]]                                          # a third, alone
    ids, _, labels = _batch(rows, [len(r) - 2 for r in rows])
    # per problem: 29 + 28 tokens saved; one group for all five rows would save only 4 * 10
    assert shared_prefixes(ids, labels) == ([0, 0, 1, 1, 2], [29, 28, 0])
    # the prefix stops one token before the earliest label of its rows: row 1 labels from token 5 on,
    # so its group can share only 4 tokens (< min_length: scored in full); rows 2-3 still share 28
    labels[1, 5:] = True
    groups, lengths = shared_prefixes(ids, labels)
    assert lengths[groups[1]] == 0 and lengths[groups[0]] == 0
    assert groups[2] == groups[3] != groups[1] and lengths[groups[2]] == 28
    # nothing shared for long enough: every row in full
    assert set(shared_prefixes(ids, labels, min_length=30)[1]) == {0}


def _model(kind: str, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, initializer_range=0.3, tie_word_embeddings=True)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def _episodes_like(seed: int = 1):
    """3 problems x 3 samples sharing a system turn and their prompts, + one unrelated row; varied lengths."""
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(0, 500, (12,), generator=g).tolist()
    rows, starts = [], []
    for p in range(3):
        prompt = system + torch.randint(0, 500, (9 + 4 * p,), generator=g).tolist()
        for _ in range(3):
            n = int(torch.randint(2, 15, (1,), generator=g))
            rows.append(prompt + torch.randint(0, 500, (n,), generator=g).tolist())
            starts.append(len(prompt))
    rows.append(torch.randint(0, 500, (25,), generator=g).tolist())
    starts.append(10)
    return _batch(rows, starts)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prefix_scoring_equals_full_scoring_values_and_gradients(kind, checkpointing):
    ids, mask, labels = _episodes_like()
    groups, lengths = shared_prefixes(ids, labels)
    assert sum(n > 0 for n in lengths) >= 2                       # really shares something
    # float64, so that summation order is invisible -- except that Llama/Qwen2's RMSNorm computes in
    # float32 whatever the input: a prefix's gradient summed over its rows *before* that cast rounds
    # differently from one summed after it (measured: logp 1e-16, weights' gradients <= 1e-7 relative,
    # the last layer 1e-16).  A wrong mask, position or group shows as differences of order 1e-1.
    model = _model(kind, 500).double()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(2))
    results = []
    for shared in (False, True):
        model.zero_grad()
        logp = token_logprobs(model, ids, mask, labels, temperature=0.7, shared_prefix=shared)   # [B, T]
        (logp * weights).sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, full_grads), (ours, our_grads) = results
    assert torch.equal(full == 0, ours == 0) and bool(labels[:, 1:].eq(full[:, 1:] != 0).all())
    assert (ours - full).abs().max() <= 1e-10 * full.abs().max()
    for name, grad in full_grads.items():
        assert (our_grads[name] - grad).abs().max() <= 1e-6 * grad.abs().max(), name


def test_each_groups_prefix_is_computed_once(tiny_model):
    model, _ = tiny_model
    ids, mask, labels = _episodes_like()
    ids = ids % model.config.vocab_size
    groups, lengths = shared_prefixes(ids, labels)
    with forward_shapes(model) as shapes, torch.no_grad():
        token_logprobs(model, ids, mask, labels, shared_prefix=True)
    assert shapes[0] == (len(lengths), max(lengths))                # one pass over the groups' prefixes
    spans = [int(m.sum()) - lengths[g] for m, g in zip(mask, groups)]
    buckets = length_buckets(spans)
    # then the remainders, bucketed by length: each pass as wide as its longest remainder
    assert shapes[1:] == [(len(b), max(spans[i] for i in b)) for b in buckets]
    assert sum(len(b) * max(spans[i] for i in b) for b in buckets) < len(spans) * max(spans)


def test_length_buckets_minimise_the_padded_total():
    assert length_buckets([5, 100, 6, 7, 98, 50, 51]) == [[0, 2, 3], [5, 6], [4, 1]]
    assert length_buckets([5, 100, 6, 7, 98, 50, 51], max_buckets=1) == [[0, 2, 3, 5, 6, 4, 1]]
    assert length_buckets([5, 5, 5]) == [[0, 1, 2]]                  # no split that saves nothing
    # two buckets: {1, 2} | {9, 10} pads to 2·2 + 2·10 = 24, better than any other split
    assert length_buckets([9, 1, 10, 2], max_buckets=2) == [[1, 3], [0, 2]]


@pytest.mark.long
def test_a_training_step_is_the_same_with_and_without_shared_prefixes(tiny_model_dir, tmp_path):
    """Through the trainer: the same rollout, loss and updated weights whether prefixes are shared or not."""
    from selfcorrect.trainer import TrainConfig, Trainer

    weights, losses = [], []
    for shared in (False, True):
        config = TrainConfig(model=str(tiny_model_dir), task="arithmetic", task_options={"n": 12},
                             out=str(tmp_path / f"run-{shared}"), iterations=1, stage1_steps=1, stage2_steps=1,
                             problems_per_step=2, samples=3, max_new_tokens=4, micro_batch_problems=2,
                             autocast="none", report_to=["none"], lr=1e-3, score_shared_prefix=shared, eval_every=0)
        trainer = Trainer.create(config)
        assert trainer.engine.shared_prefix is shared
        losses.append([trainer.train_step()["loss"] for _ in range(2)])
        weights.append({n: p.detach().clone() for n, p in trainer.policy.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for name, w in weights[0].items():
        assert torch.allclose(w, weights[1][name], atol=1e-6), name


def test_only_the_replicated_layout_shares_prefixes():
    """Sharded layouts run collectives in every forward pass: processes whose rows group differently
    would run different numbers of passes and hang, so they score every row in full."""
    from selfcorrect.engines.deepspeed import DeepSpeedEngine
    from selfcorrect.engines.fsdp import FSDP2Engine
    from selfcorrect.engines.replicated import ReplicatedEngine

    assert ReplicatedEngine.can_share_prefixes
    assert not FSDP2Engine.can_share_prefixes and not DeepSpeedEngine.can_share_prefixes


def test_sliding_window_models_are_scored_in_full():
    """A sliding-window layer's cache keeps only its window, so a longer shared prefix is never cut:
    such models are scored row by row, with the same result as without sharing."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=500, hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=8, sliding_window=4)).double().eval()
    ids, mask, labels = _episodes_like()
    with torch.no_grad():
        full = token_logprobs(model, ids, mask, labels)
        shared = token_logprobs(model, ids, mask, labels, shared_prefix=True)
    assert torch.equal(full, shared)


def test_a_row_without_labels_never_shares_past_its_end():
    ids, mask, labels = _batch([[1] * 12 + [2, 3], [1] * 12 + [2, 3, 4, 5]], [99, 13])   # row 0: no labels
    groups, lengths = shared_prefixes(ids, labels, mask)
    assert all(n <= int(m.sum()) - 2 for n, m, g in zip([lengths[g] for g in groups], mask, groups))
