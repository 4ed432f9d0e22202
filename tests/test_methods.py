"""Baselines and ablations: what each method trains on, budgets, and `compare` end to end (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from selfcorrect.algorithms.sft import sft_loss
from selfcorrect.training.sft_data import pair_episodes, star_filter
from selfcorrect.compare import run_compare
from selfcorrect.errors import ConfigError
from selfcorrect.rollout import ConversationBuilder
from selfcorrect.rollout.episodes import Attempt, Episode
from selfcorrect.tasks.base import Problem
from selfcorrect.trainer import METHODS, TrainConfig, Trainer



def _config(model_dir, out, task, **overrides) -> TrainConfig:
    base = dict(model=str(model_dir), task=task, out=str(out), iterations=1, stage1_steps=1, stage2_steps=1,
                problems_per_step=2, samples=2, max_new_tokens=3, eval_limit=2, eval_max_new_tokens=2,
                micro_batch_problems=1, autocast="none", report_to=["none"], log_samples_every=0, lr=1e-3,
                star_rounds=2, sft_steps=1, sft_batch_episodes=4, sft_keep="D+")
    base.update(overrides)
    return TrainConfig(**base)


def _episode(pid: str, rewards: list[float], ids: list[list[int]] | None = None) -> Episode:
    ids = ids or [[10 + k] for k in range(len(rewards))]
    attempts, start = [], 3
    for r, a in zip(rewards, ids):
        attempts.append(Attempt(ids=a, start=start, text=str(a), truncated=False, reward=r, answer=str(a)))
        start += len(a) + 2
    return Episode(problem=Problem(id=pid, question=pid), sample=0, tokens=[0] * start, attempts=attempts)


def test_star_filter_keeps_exactly_wrong_to_right():
    eps = [_episode("a", [0, 1]), _episode("b", [1, 1]), _episode("c", [1, 0]), _episode("d", [0, 0]),
           _episode("e", [0, 1])]
    assert [e.problem.id for e in star_filter(eps, "D")] == ["a", "e"]
    assert [e.problem.id for e in star_filter(eps, "D+")] == ["a", "b", "e"]
    with pytest.raises(ValueError):
        star_filter(eps, "D++")


def test_pair_sft_pairs_wrong_with_right(default_tokenizer):
    builder = ConversationBuilder(default_tokenizer, "Fix it.")
    eos = default_tokenizer.eos_token_id
    a_w1, a_r, a_w2 = _episode("A", [0], [[101, eos]]), _episode("A", [1], [[102, eos]]), _episode("A", [0], [[103, eos]])
    b_w = _episode("B", [0], [[201, eos]])                           # no right answer: no pair
    c_r1, c_r2 = _episode("C", [1], [[301, eos]]), _episode("C", [1], [[302, eos]])
    firsts = [a_w1, a_r, a_w2, b_w, c_r1, c_r2]
    prompts = {"A": "qa", "B": "qb", "C": "qc"}
    d = pair_episodes(builder, firsts, prompts, "D")
    assert [(e.problem.id, e.attempts[0].ids[0], e.attempts[1].ids[0]) for e in d] == [("A", 101, 102), ("A", 103, 102)]
    assert all(e.attempts[0].reward == 0.0 and e.attempts[1].reward == 1.0 for e in d)
    d_plus = pair_episodes(builder, firsts, prompts, "D+")
    assert [(e.problem.id, e.attempts[0].ids[0], e.attempts[1].ids[0]) for e in d_plus] == [
        ("A", 101, 102), ("A", 103, 102), ("C", 301, 302), ("C", 302, 301)]
    # the second attempt follows the correction instruction in the token sequence
    e = d[0]
    assert e.tokens[e.attempts[1].start:e.attempts[1].end] == [102, eos]
    assert "Fix it." in default_tokenizer.decode(e.tokens[e.attempts[0].end:e.attempts[1].start])


def test_sft_loss_is_attempt_two_token_mean():
    mask = torch.zeros(1, 2, 6, dtype=torch.bool)
    mask[0, 0, 1:3] = True
    mask[0, 1, 4:6] = True
    logp = torch.log(torch.tensor([[0.9, 0.5, 0.5, 0.9, 0.25, 0.5]])).requires_grad_()
    loss = sft_loss(logp, mask, trained=[False, True])
    assert torch.isclose(loss, -(torch.log(torch.tensor(0.25)) + torch.log(torch.tensor(0.5))) / 2)
    loss.backward()
    assert logp.grad[0, :4].eq(0).all() and torch.allclose(logp.grad[0, 4:], torch.tensor([-0.5, -0.5]))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_spends_the_same_sample_budget(method):
    c = TrainConfig(method=method, iterations=2, stage1_steps=3, stage2_steps=5, problems_per_step=4, samples=2,
                    star_rounds=4, sft_steps=7)
    budget = c.episode_budget
    assert budget == 2 * 8 * 4 * 2
    spent = sum(p.steps * c.problems_per_step * c.samples if p.kind == "rl" else p.collect_episodes
                for p in c.schedule())
    assert spent == (0 if method == "prompting" else budget)
    kinds = {p.name for p in c.schedule()}
    expected = {"score": {"stage1", "stage2"}, "no-shaping": {"stage1", "stage2"}, "stage2-only": {"stage2"},
                "single-turn": {"single"}, "star": {"star"}, "pair-sft": {"pair"},
                "star-stage2": {"stage1", "star"}, "prompting": set()}[method]
    assert kinds == expected


def test_star_trains_only_on_filtered_attempt_two(tiny_model_dir, tmp_path, parity_task):
    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "star", parity_task, method="star",
                                     sft_keep="D"))
    row = trainer.train_step()
    record = torch.load(tmp_path / "star" / "sft" / "phase-0.pt", weights_only=False)
    assert row["sft_collected"] == record["collected"] == 4          # budget 8 episodes / 2 rounds
    assert all(e.attempts[0].reward == 0.0 and e.attempts[1].reward == 1.0 for e in record["episodes"])
    assert row["sft_dataset"] == len(record["episodes"])
    assert row["skipped"] == (len(record["episodes"]) == 0)


def test_the_sft_steps_use_only_the_trainer_state_their_protocol_lists(tiny_model_dir, tmp_path, parity_task):
    """SupervisedHost both ways: the trainer has every member, and the mixin's methods touch nothing else
    (a new ``self.x`` in training/sft_steps.py must be declared there first)."""
    import ast
    import inspect

    from selfcorrect.training import sft_steps

    members = set(sft_steps.SupervisedHost.__annotations__) | {
        name for name, value in vars(sft_steps.SupervisedHost).items() if callable(value) and name.startswith("_")
        and not name.startswith("__")}
    tree = ast.parse(inspect.getsource(sft_steps.SupervisedSteps))
    own = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "self"}
    assert used - own == members
    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "run", parity_task, method="star"))
    assert isinstance(trainer, sft_steps.SupervisedHost)
    assert all(hasattr(trainer, name) for name in members)


@pytest.mark.long
def test_the_method_table_holds_its_facts():
    """β2 has one source (the trainer's, given every step: Stage I binds none and refuses a call without it);
    SFT phases name their dataset builder; the STaR rounds are the phases that restart."""
    from selfcorrect.training.sft_data import pair_dataset, star_dataset

    stage1 = TrainConfig().schedule()[0].objective
    assert stage1.per_step == ("beta2",) and "beta2" not in stage1.loss.keywords
    logp = torch.zeros(2, 3)
    args = (logp, logp, logp, torch.ones(2, 2, 3, dtype=torch.bool), torch.zeros(2, 2), torch.tensor([0, 0]))
    with pytest.raises(TypeError, match="per-step hyperparameters"):
        stage1(*args, norm=2)
    assert torch.isfinite(stage1(*args, norm=2, beta2=0.1).loss)
    assert [p.dataset for p in TrainConfig(method="star").schedule()] == [star_dataset] * 3
    assert [p.dataset for p in TrainConfig(method="pair-sft").schedule()] == [pair_dataset]
    assert [p.restart for p in TrainConfig(method="star").schedule()] == [True] * 3
    assert not any(p.restart for m in METHODS if m != "star" for p in TrainConfig(method=m).schedule())


def test_single_turn_and_no_shaping_objectives(tiny_model_dir, tmp_path, parity_task, monkeypatch):
    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "single", parity_task, method="single-turn"))
    trainer.train_step()
    assert all(len(ep.attempts) == 1 for ep in trainer.last_episodes)   # training touches attempt 1 only
    seen = {}
    import selfcorrect.training.methods as methods

    original = methods.stage_two_loss

    def spy(*args, **kwargs):
        seen["alpha"] = kwargs["alpha"]
        return original(*args, **kwargs)

    monkeypatch.setattr(methods, "stage_two_loss", spy)
    no_shaping = Trainer.create(_config(tiny_model_dir, tmp_path / "ns", parity_task, method="no-shaping",
                                        stage1_steps=0))
    no_shaping.train_step()
    assert seen["alpha"] == 0.0


@pytest.mark.long
def test_compare_end_to_end_and_resumable(tiny_model_dir, tmp_path, parity_task):
    base = _config(tiny_model_dir, tmp_path / "unused", parity_task)
    out = tmp_path / "cmp"
    events = []
    methods = ["score", "star", "pair-sft", "prompting"]
    table = run_compare(base, methods, [0, 1], out, on_run=lambda m, s, what: events.append((m, s, what)))
    assert [e[2] for e in events] == ["training"] * 6 + ["evaluating (no training steps)"] * 2   # prompting
    assert set(table["methods"]) == set(methods)
    for m in methods:
        entry = table["methods"][m]
        assert entry["n"] == 4 and entry["n_groups"] == 2            # 2 problems x 2 seeds, same problems
        assert len(entry["per_seed"]) == 2 and "delta" in entry["ci95"]
    md = (out / "table.md").read_text()
    assert all(f"| {m} |" in md for m in methods)
    budgets = {m: table["methods"][m]["budget"] for m in methods}
    assert ({m: (b["sampled_episodes"], b["scheduled_updates"]) for m, b in budgets.items()} ==
        {"score": (8, 2), "star": (8, 2), "pair-sft": (8, 1), "prompting": (0, 0)})
    assert all(len(b["applied_updates"]) == 2 for b in budgets.values())
    assert "| pair-sft | 8 | 1 |" in md
    for png in ("edit_ratio.png", "training_curves.png", "delta.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not list((out / "prompting" / "seed-0").glob("checkpoint-*"))   # nothing trained, nothing saved
    events.clear()
    run_compare(base, methods, [0, 1], out, on_run=lambda m, s, what: events.append((m, s, what)))
    assert all("skipped" in e[2] for e in events) and len(events) == 8
    assert json.loads((out / "table.json").read_text())["seeds"] == [0, 1]


@pytest.mark.parametrize("lora_r", [0, 2])
@pytest.mark.long
def test_star_rounds_fine_tune_the_initial_model_afresh_on_every_kept_trace(tiny_model_dir, tmp_path, parity_task,
                                                                           monkeypatch, lora_r):
    """STaR's protocol: round r samples with round r-1's model, then fine-tunes the *initial* model (fresh
    Adam, warmup again) on the traces kept in rounds 1..r."""
    run = tmp_path / "star"
    config = _config(tiny_model_dir, run, parity_task, method="star", stage1_steps=3, stage2_steps=3,
                     star_rounds=3, sft_steps=2, warmup_steps=2, lora_r=lora_r)
    trainer = Trainer.create(config)
    trained = lambda: {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    initial, restarts = trained(), []
    original = Trainer._restart_from_initial

    def spy(self):
        before = trained()
        original(self)
        after = trained()
        restarts.append((self.step, any(not torch.equal(before[n], initial[n]) for n in initial),
                         all(torch.equal(after[n], initial[n]) for n in initial), len(self.optimizer.state)))

    monkeypatch.setattr(Trainer, "_restart_from_initial", spy)
    trainer.train()
    assert restarts == [(2, True, True, 0), (4, True, True, 0)]   # moved in the round before, reset exactly
    kept = [len(torch.load(run / "sft" / f"phase-{i}.pt", weights_only=False)["episodes"]) for i in range(3)]
    assert min(kept) > 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["sft_dataset"] for r in rows] == [kept[0]] * 2 + [kept[0] + kept[1]] * 2 + [sum(kept)] * 2
    assert [r["lr"] for r in rows] == pytest.approx([5e-4, 1e-3] * 3)


@pytest.mark.long
def test_star_resumed_at_a_round_boundary_equals_a_straight_run(tiny_model_dir, tmp_path, parity_task,
                                                               interrupt_training):
    from safetensors.torch import load_file

    overrides = dict(method="star", stage1_steps=3, stage2_steps=3, star_rounds=3, sft_steps=2, warmup_steps=2)
    straight = Trainer.create(_config(tiny_model_dir, tmp_path / "a", parity_task, **overrides))
    straight.train()
    interrupted = Trainer.create(_config(tiny_model_dir, tmp_path / "b", parity_task, **overrides))
    interrupt_training(interrupted, 2)                           # the end of round 1
    Trainer.resume(tmp_path / "b").train()
    a, b = (load_file(str(tmp_path / "a" / "checkpoint-6" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "checkpoint-6" / "model.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_compare_row_may_change_settings_of_its_own_runs():
    """`--methods score,star:sft_keep=D+`: the paper's STaR D+ row beside the others, in its own directory."""
    from pathlib import Path

    from selfcorrect.compare import method_config, method_spec, run_compare, run_dir
    from selfcorrect.trainer import TrainConfig

    assert method_spec("star:sft_keep=D+:sft_steps=4") == ("star", {"sft_keep": "D+", "sft_steps": "4"})
    base = TrainConfig(stage1_steps=1, stage2_steps=1)
    config = method_config(base, "star:sft_keep=D+:sft_steps=4")
    assert (config.method, config.sft_keep, config.sft_steps) == ("star", "D+", 4)
    assert run_dir(Path("out"), "star:sft_keep=D+", 0) == Path("out/star:sft_keep=D+/seed-0")
    with pytest.raises(ConfigError, match="expected name:key=value"):
        method_spec("star:D+")
    with pytest.raises(ConfigError, match="unknown field 'sft_kept'"):
        run_compare(base, ["star:sft_kept=D+"], [0], Path("/nonexistent/never-created"))
    with pytest.raises(ConfigError, match="sft_keep must be one of"):
        method_config(base, "star:sft_keep=E")
    with pytest.raises(ConfigError, match="unknown method"):
        run_compare(base, ["ppo:lr=1"], [0], Path("/nonexistent/never-created"))


@pytest.mark.long
def test_compare_with_a_shared_warm_start(tiny_model_dir, tmp_path, parity_task):
    from safetensors.torch import load_file

    from selfcorrect.compare import methods_in
    from selfcorrect.config import load_yaml

    base = _config(tiny_model_dir, tmp_path / "unused", parity_task)
    out = tmp_path / "cmp"
    events = []
    table = run_compare(base, ["score", "single-turn"], [0], out, warm_start_steps=2,
                        on_run=lambda m, s, what: events.append((m, s, what)))
    assert events == [("warm-start", 0, "training"), ("score", 0, "training"), ("single-turn", 0, "training")]
    warm = out / "warm-start" / "seed-0"
    warm_config = load_yaml(warm / "config.yaml")
    assert warm_config["method"] == "single-turn" and warm_config["stage2_steps"] == 2
    assert warm_config["eval_split"] == "validation"                 # a starting point never reads test
    checkpoint = warm / "checkpoint-2"
    moved = load_file(str(checkpoint / "model.safetensors"))
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(moved[k], initial[k]) for k in initial)
    for method in ("score", "single-turn"):                          # every method starts there: its π_ref
        assert load_yaml(out / method / "seed-0" / "config.yaml")["model"] == str(checkpoint)
    assert methods_in(out) == ["score", "single-turn"]
    assert table["warm_start"]["steps"] == 2 and "same warm start" in (out / "table.md").read_text()
    events.clear()
    run_compare(base, ["score", "single-turn"], [0], out, warm_start_steps=2,
                on_run=lambda m, s, what: events.append((m, s, what)))
    assert [e[2] for e in events] == ["finished earlier: skipped"] * 3
    with pytest.raises(ConfigError, match="warm_start_steps"):
        run_compare(base, ["score"], [0], out, warm_start_steps=-1)
