"""Train / validation / test: carved by hash, checked for overlap, and kept apart by the trainer."""

from __future__ import annotations

import json
import random

import pytest
import torch

from selfcorrect.errors import ConfigError
from selfcorrect.tasks.base import Problem
from selfcorrect.tasks.splits import carve, hash_fraction, normalize_problem, overlapping
from selfcorrect.trainer import TrainConfig, Trainer
from selfcorrect.training.config import run_splits


def _problems(n: int, prefix: str = "q") -> list[Problem]:
    return [Problem(id=f"{prefix}{i}", question=f"What is {i} + {2 * i}?", answer=str(3 * i)) for i in range(n)]


def test_carve_is_a_function_of_the_text_alone():
    problems = _problems(2000)
    train, validation = carve(problems, 0.1)
    assert len(train) + len(validation) == 2000 and 150 < len(validation) < 250      # about a tenth
    assert {p.id for p in train}.isdisjoint(p.id for p in validation)
    shuffled = problems[:]
    random.Random(3).shuffle(shuffled)
    again = carve(shuffled, 0.1)[1]                     # any order, and any subset: the same side
    assert {p.id for p in again} == {p.id for p in validation}
    assert {p.id for p in carve(problems[:500], 0.1)[1]} == {p.id for p in validation if int(p.id[1:]) < 500}
    # The side is the hash of the normalised text: ids do not matter, case and spacing do not either.
    twin = Problem(id="other", question=f"  {validation[0].question.upper()} ")
    assert carve([twin], 0.1)[1] == [twin]
    assert hash_fraction(normalize_problem(twin)) == hash_fraction(normalize_problem(validation[0])) < 0.1
    assert carve(problems, 0.0) == (problems, [])


def test_overlap_is_by_normalised_text_and_code_tests_count():
    train = _problems(5)
    test = [Problem(id="t0", question="what   is 1 + 2?"), Problem(id="t1", question="What is 9 + 9?")]
    assert [p.id for p in overlapping(test, train)] == ["t0"]
    code = Problem(id="c", question="def f():", tests="assert f() == 1")
    other_tests = Problem(id="d", question="def f():", tests="assert f() == 2")
    assert overlapping([other_tests], [code]) == []     # same stub, other tests: another problem


def _math_file(path, rows):
    path.write_text("".join(json.dumps({"problem": q, "answer": a}) + "\n" for q, a in rows))
    return str(path)


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(stage1_steps=1, stage2_steps=1, out=str(tmp_path / "run"), report_to=["none"])
    return TrainConfig(**{**base, **kw})


def test_arithmetic_takes_its_own_validation_split(tmp_path):
    splits = run_splits(_config(tmp_path, task_options={"n": 50}))
    assert splits.validation.options["split"] == "validation" and len(splits.validation.problems) == 50
    assert len(splits.train.problems) == 50                       # nothing carved from train
    assert splits.sources["validation"]["source"].startswith("the task's own validation split")
    assert splits.sources["test"] == {"task": "arithmetic", "split": "test", "problems": 50,
                                      "source": "task 'arithmetic', split test"}


def test_a_training_file_is_not_its_own_test_set(tmp_path):
    """The new user's mistake: `-o path=FILE` alone made the "held-out" numbers the training file's."""
    rows = [(f"What is {i} times {i}?", str(i * i)) for i in range(40)]
    train_file = _math_file(tmp_path / "train.jsonl", rows)
    with pytest.raises(ConfigError) as info:
        run_splits(_config(tmp_path, task="math", task_options={"path": train_file}))
    message = str(info.value)
    assert "40 of the 40 test problems" in message and "--eval-task-options path=TEST.jsonl" in message
    assert "\n" not in message
    # A test file with one training problem in it (other case and spacing) is refused too.
    test_file = _math_file(tmp_path / "test.jsonl", [("what is 3  times 3?", "9"), ("What is 50 times 50?", "2500")])
    with pytest.raises(ConfigError, match="1 of the 2 test problems"):
        run_splits(_config(tmp_path, task="math", task_options={"path": train_file},
                           eval_task_options={"path": test_file}))
    allowed = run_splits(_config(tmp_path, task="math", task_options={"path": train_file},
                                 eval_task_options={"path": test_file}, allow_train_test_overlap=True))
    assert len(allowed.test.problems) == 2


def test_a_separate_test_file_keeps_the_training_options_and_validation_is_carved(tmp_path):
    rows = [(f"Q{i}: what is {i} squared?", str(i * i)) for i in range(60)]
    train_file = _math_file(tmp_path / "train.jsonl", [(q, "0") for q, _ in rows])
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "What is 2^10?", "answer": "1024"}) + "\n")
    config = _config(tmp_path, task="math", task_options={"path": train_file, "question_field": "problem"},
                     eval_task_options={"path": str(tmp_path / "test.jsonl"), "question_field": "question"})
    splits = run_splits(config)
    carved_train, carved_validation = carve(splits.train.problems + splits.validation.problems, 0.1)
    assert {p.id for p in splits.validation.problems} == {p.id for p in carved_validation}
    assert len(splits.train.problems) + len(splits.validation.problems) == 60
    assert [p.question for p in splits.test.problems] == ["What is 2^10?"]
    assert "carved by a hash" in splits.sources["validation"]["source"]
    with pytest.raises(ConfigError, match="validation_fraction must be in"):
        _config(tmp_path, validation_fraction=1.0)


def test_eval_every_needs_validation_problems(tiny_model_dir, tmp_path):
    train = _math_file(tmp_path / "train.jsonl", [("What is 1 + 1?", "2"), ("What is 2 + 2?", "4")])
    test = _math_file(tmp_path / "test.jsonl", [("What is 3 + 3?", "6")])
    with pytest.raises(ConfigError, match="eval_every 1 needs validation problems, but task 'math' has no "
                                          "'validation' split and validation_fraction 0.0 carved none of its 2 "
                                          "training problems"):
        Trainer.create(_config(tmp_path, model=str(tiny_model_dir), task="math", task_options={"path": train},
                               eval_task_options={"path": test}, eval_every=1, validation_fraction=0.0))
    assert not (tmp_path / "run").exists()                       # refused before anything was written


@pytest.mark.long
def test_validation_chooses_the_checkpoint_and_test_is_evaluated_once(tiny_model_dir, tmp_path, monkeypatch):
    config = TrainConfig(model=str(tiny_model_dir), task_options={"n": 6}, out=str(tmp_path / "run"),
                         iterations=1, stage1_steps=2, stage2_steps=1, problems_per_step=2, samples=2,
                         max_new_tokens=3, eval_max_new_tokens=3, eval_limit=3, validation_limit=2, eval_every=2,
                         autocast="none", report_to=["none"], micro_batch_problems=1, save_every=2)
    trainer = Trainer.create(config)
    seen = []
    evaluate = trainer.evaluate

    def spy(split="test"):
        summary, episodes = evaluate(split)
        seen.append((trainer.step, split, [ep.problem.id for ep in episodes]))
        return summary, episodes

    monkeypatch.setattr(trainer, "evaluate", spy)
    trainer.train()
    assert [(step, split) for step, split, _ in seen] == [(2, "validation"), (3, "validation"), (3, "test")]
    validation_ids = {p.id for p in trainer.validation_task.problems[:2]}
    test_ids = {p.id for p in trainer.test_task.problems[:3]}
    assert all(set(ids) == (validation_ids if split == "validation" else test_ids) for _, split, ids in seen)
    assert validation_ids.isdisjoint(test_ids) and validation_ids.isdisjoint(p.id for p in trainer.task.problems)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [("validation_acc_t1" in r, "test_acc_t1" in r) for r in rows] == [(False, False), (True, False),
                                                                                (True, False)]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    scores = {r["step"]: r["validation_acc_t2"] for r in rows if "validation_acc_t2" in r}
    top = max(scores.values())
    assert best["score"] == top and best["step"] == min(s for s, v in scores.items() if v == top)
    final = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert final["split"] == {"task": "arithmetic", "split": "test", "problems": 6, "evaluated": 3,
                              "source": "task 'arithmetic', split test"}
    assert set(final["splits"]) == {"train", "validation", "test"}
    report = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "Problems: 3 of the 6 test problems (task 'arithmetic', split test)." in report


def test_an_explicit_training_split_does_not_become_the_test_split(tmp_path):
    splits = run_splits(_config(tmp_path, task_options={"n": 20, "split": "train"}))
    assert splits.test.options["split"] == "test" and splits.train.options["split"] == "train"


def _mbpp_file(path, ids):
    rows = [{"task_id": i, "text": f"Return {i}.", "code": f"def f():\n    return {i}\n",
             "test_list": [f"assert f() == {i}"]} for i in ids]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_mbpp_validation_is_native_else_carved_and_never_a_training_problem(tmp_path):
    full = _mbpp_file(tmp_path / "mbpp.jsonl", [11, 12, 511, 512, 601, 602, 603])
    native = run_splits(_config(tmp_path, task="mbpp", task_options={"path": full}))
    assert [p.id for p in native.validation.problems] == ["mbpp/511", "mbpp/512"]
    # train_split all: the validation rows leave training (model selection must not see training problems)
    everything = run_splits(_config(tmp_path, task="mbpp", task_options={"path": full}, train_split="all",
                                    eval_task="humaneval", eval_task_options={"limit": 2}))
    assert {p.id for p in everything.train.problems}.isdisjoint({"mbpp/511", "mbpp/512"})
    assert "2 problems that were also training problems left training" in everything.sources["validation"]["source"]
    # a file without the validation task ids: carved from training instead of failing
    partial = _mbpp_file(tmp_path / "part.jsonl", [11, 12] + list(range(601, 661)))
    carved = run_splits(_config(tmp_path, task="mbpp", task_options={"path": partial}))
    assert carved.validation is not None and "carved by a hash" in carved.sources["validation"]["source"]
    assert len(carved.train.problems) + len(carved.validation.problems) == 60


def test_a_resume_whose_task_gives_other_training_problems_is_refused(tiny_model_dir, tmp_path):
    rows = [(f"What is {i} plus {i}?", str(2 * i)) for i in range(30)]
    train = _math_file(tmp_path / "train.jsonl", rows)
    test = _math_file(tmp_path / "test.jsonl", [("What is 100 plus 1?", "101")])
    config = _config(tmp_path, model=str(tiny_model_dir), task="math", task_options={"path": train},
                     eval_task_options={"path": test}, stage1_steps=1, stage2_steps=1, problems_per_step=1,
                     samples=2, max_new_tokens=2, eval_max_new_tokens=2, eval_limit=1, autocast="none",
                     micro_batch_problems=1, save_every=1)
    run = Trainer.create(config)
    run.train_step()
    run.save()
    run.lock.release()
    _math_file(tmp_path / "train.jsonl", rows[:-1] + [("What is 99 plus 99?", "198")])   # the file changed
    with pytest.raises(ConfigError, match="the task now gives other training problems than the run trained on"):
        Trainer.resume(tmp_path / "run")


@pytest.mark.long
def test_the_best_checkpoint_knows_it_is_the_best(tiny_model_dir, tmp_path):
    """best.json and the checkpoint's own state agree, so a resumed run never forgets its best."""
    from selfcorrect.checkpoint import load_state

    config = TrainConfig(model=str(tiny_model_dir), task_options={"n": 6}, out=str(tmp_path / "run"),
                         iterations=1, stage1_steps=2, stage2_steps=2, problems_per_step=2, samples=2,
                         max_new_tokens=3, eval_max_new_tokens=3, eval_limit=2, validation_limit=2, eval_every=1,
                         autocast="none", report_to=["none"], micro_batch_problems=1, save_every=1, keep_last=1)
    Trainer.create(config).train()
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    state = load_state(tmp_path / "run" / best["checkpoint"])
    assert state["best"] == best and (tmp_path / "run" / best["checkpoint"]).is_dir()


@pytest.mark.long
def test_periodic_test_evaluations_keep_per_problem_records_and_leave_training_alone(tiny_model_dir, tmp_path):
    """test_every writes test-evals/step-N/{metrics.json,samples.jsonl} (the budget curve pools them over
    seeds) and changes nothing in training: the curve's run at step N is the run that stops at step N."""
    def run(name, **extra):
        config = TrainConfig(model=str(tiny_model_dir), task_options={"n": 6}, out=str(tmp_path / name),
                             iterations=1, stage1_steps=2, stage2_steps=1, problems_per_step=2, samples=2,
                             max_new_tokens=3, eval_max_new_tokens=3, eval_limit=3, temperature=1.0,
                             autocast="none", report_to=["none"], micro_batch_problems=1, **extra)
        trainer = Trainer.create(config)
        trainer.train()
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return trainer, rows

    plain, plain_rows = run("plain")
    curve, curve_rows = run("curve", test_every=1)
    assert sorted(p.name for p in (tmp_path / "curve" / "test-evals").iterdir()) == ["step-1", "step-2"]
    for row in curve_rows[:2]:
        where = tmp_path / "curve" / "test-evals" / f"step-{row['step']}"
        records = [json.loads(line) for line in (where / "samples.jsonl").read_text().splitlines()]
        assert [r["id"] for r in records] == [p.id for p in curve.test_task.problems[:3]]
        for k in (1, 2):
            assert row[f"test_acc_t{k}"] == sum(r["attempts"][k - 1]["reward"] for r in records) / 3
        assert json.loads((where / "metrics.json").read_text())["step"] == row["step"]
    assert not (tmp_path / "plain" / "test-evals").exists()
    drop = ("test_acc_t1", "test_acc_t2", "test_delta")
    timing = lambda row: {k: v for k, v in row.items() if not k.startswith("time_") and "per_s" not in k
                          and k not in drop}
    assert [timing(r) for r in curve_rows] == [timing(r) for r in plain_rows]
    for name, tensor in plain.policy.state_dict().items():
        assert torch.equal(tensor, curve.policy.state_dict()[name]), name


@pytest.mark.long
def test_a_longer_run_at_step_n_is_the_run_that_stops_at_n(tiny_model_dir, tmp_path):
    """The budget curve's premise: with more iterations, a run's state and test evaluation at step N (its
    checkpoint-N and test-evals/step-N) are those of the run scheduled to end at N."""
    def config(name, iterations, **extra):
        return TrainConfig(model=str(tiny_model_dir), task_options={"n": 6}, out=str(tmp_path / name),
                           iterations=iterations, stage1_steps=2, stage2_steps=1, problems_per_step=2, samples=2,
                           max_new_tokens=3, eval_max_new_tokens=3, eval_limit=3, temperature=1.0,
                           autocast="none", report_to=["none"], micro_batch_problems=1, **extra)

    short = Trainer.create(config("short", 1))
    short.train()
    Trainer.create(config("long", 2, test_every=3, save_every=3, keep_last=10)).train()
    long_dir, short_dir = tmp_path / "long", tmp_path / "short"
    assert ((long_dir / "test-evals" / "step-3" / "samples.jsonl").read_text() ==
        (short_dir / "eval" / "samples.jsonl").read_text())
    from safetensors.torch import load_file

    weights = lambda d: load_file(str(next(d.glob("*.safetensors"))))
    a, b = weights(long_dir / "checkpoint-3"), weights(short_dir / "checkpoint-3")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_drops_the_test_evaluations_after_its_checkpoint(tmp_path):
    from selfcorrect.training.run_log import truncate_logs

    for step in (2, 4, 10):
        (tmp_path / "test-evals" / f"step-{step}").mkdir(parents=True)
        (tmp_path / "test-evals" / f"step-{step}" / "samples.jsonl").write_text("{}\n")
    truncate_logs(tmp_path, 4)
    assert sorted(p.name for p in (tmp_path / "test-evals").iterdir()) == ["step-2", "step-4"]
