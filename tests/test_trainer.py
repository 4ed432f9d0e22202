"""Trainer: schedule, data order, exact resume, NaN skip, Ctrl-C checkpoint, config errors (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from selfcorrect.algorithms.policy_gradient import LossOutput
from selfcorrect.errors import ConfigError
from selfcorrect.trainer import ProblemStream, TrainConfig, Trainer, micro_batches




def _config(model_dir, out, task="arithmetic", **overrides) -> TrainConfig:
    base = dict(model=str(model_dir), task=task, task_options={"n": 12} if task == "arithmetic" else {},
                out=str(out),
                iterations=2, stage1_steps=2, stage2_steps=1, problems_per_step=2, samples=2,
                max_new_tokens=4, eval_limit=2, eval_max_new_tokens=3, micro_batch_problems=1,
                autocast="none", report_to=["none"], log_samples_every=1, lr=1e-3)
    base.update(overrides)
    return TrainConfig(**base)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_schedule_interleaves_stages():
    c = TrainConfig(iterations=2, stage1_steps=2, stage2_steps=3)
    assert [c.phase(s) for s in range(c.total_steps)] == [
        (1, 1), (1, 1), (1, 2), (1, 2), (1, 2), (2, 1), (2, 1), (2, 2), (2, 2), (2, 2)]
    m = TrainConfig(method="stage2-only", iterations=1, stage1_steps=5, stage2_steps=3)
    assert m.total_steps == 8 and {m.phase(s)[1] for s in range(8)} == {2}   # same budget, all Stage II


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="ppo"), "method must be one of"),
    (dict(samples=1), "rloo' needs samples >= 2"),
    (dict(attempts=1), "attempts must be >= 2"),
    (dict(stage1_steps=0, stage2_steps=0), "no steps"),
    (dict(lr=0.0), "lr must be a positive"),
    (dict(beta2=-1.0), "beta2 must be a finite number >= 0"),
    (dict(kl_in="both"), "kl_in must be one of"),
    (dict(report_to=["mlflow"]), "unknown logger"),
    (dict(temperature=-0.5), "temperature"),
])
def test_bad_config_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_problem_stream_covers_each_epoch_and_resumes():
    stream = ProblemStream(5, seed=1)
    first = stream.take(5)
    assert sorted(first) == list(range(5))
    a = stream.take(3)
    resumed = ProblemStream(5, seed=1, **stream.state())
    assert stream.take(4) == resumed.take(4)
    assert sorted(a + ProblemStream(5, seed=1, epoch=1, position=3).take(2)) == list(range(5))


def test_micro_batches_keep_whole_problems(tiny_model_dir, tmp_path):
    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "run"))
    problems = trainer.task.problems[:3]
    from selfcorrect.rollout import SamplingParams, sample_episodes

    eps = sample_episodes(trainer.backend, trainer.builder, trainer.task, problems, samples=2, attempts=2,
                          params=SamplingParams(max_new_tokens=3))
    batches = micro_batches(eps, 2, samples=2)
    assert sorted(len(b) for b in batches) == [2, 4]
    for b in batches:
        ids = [e.problem.id for e in b]
        assert all(ids.count(i) == 2 for i in ids)


def test_a_problem_drawn_twice_in_a_step_is_two_groups_with_their_own_seeds(tiny_model_dir, tmp_path):
    """Across an epoch boundary one step can draw a problem twice: two RLOO groups, distinct episodes."""
    from selfcorrect.rollout import SamplingParams, sample_episodes
    from selfcorrect.rollout.sampling import draw_indices
    from selfcorrect.trainer import rloo_group

    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "run"))
    a, b = trainer.task.problems[:2]
    problems = [a, b, a]
    assert draw_indices(problems) == [0, 0, 1]
    eps = sample_episodes(trainer.backend, trainer.builder, trainer.task, problems, samples=2, attempts=1,
                          params=SamplingParams(temperature=1.0, max_new_tokens=4), per_row_seed=7)
    assert [e.sample for e in eps] == [0, 1, 0, 1, 2, 3]
    first, again = eps[0:2], eps[4:6]
    assert [e.tokens for e in first] != [e.tokens for e in again]      # their own seeds, their own samples
    groups = {rloo_group(e, 2) for e in eps}
    assert groups == {(a.id, 0), (b.id, 0), (a.id, 1)}
    batches = micro_batches(eps, 1, samples=2)
    assert sorted(len(x) for x in batches) == [2, 2, 2]                 # never one merged group of 4


@pytest.mark.parametrize("stop, phase, anchor", [(4, (2, 1), True), (5, (2, 2), False)])
@pytest.mark.long
def test_resume_after_interrupt_equals_straight_run(stop, phase, anchor, tiny_model_dir, tmp_path, parity_task,
                                                    interrupt_training):
    """6 steps straight vs ``stop`` steps + Ctrl-C + resume: identical weights, resumed inside iteration 2's
    Stage I (its checkpoint holds the anchor attempt 1 is pinned to) or its Stage II (no anchor is saved: the
    next iteration rebuilds it, and the final checkpoint leaves it out too)."""
    straight = Trainer.create(_config(tiny_model_dir, tmp_path / "a", parity_task))
    straight.train()
    assert not (tmp_path / "a" / "checkpoint-6" / "anchor.safetensors").exists()

    interrupted = Trainer.create(_config(tiny_model_dir, tmp_path / "b", parity_task))
    interrupt_training(interrupted, stop)
    assert (tmp_path / "b" / f"checkpoint-{stop}" / "anchor.safetensors").is_file() == anchor
    resumed = Trainer.resume(tmp_path / "b")
    assert resumed.step == stop and resumed.config.phase(resumed.step) == phase
    resumed.train()

    a, b = _weights(tmp_path / "a" / "checkpoint-6"), _weights(tmp_path / "b" / "checkpoint-6")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], initial[k]) for k in a)   # training did change the weights
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(1, 7))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


@pytest.mark.long
def test_run_directory_contents_and_metrics(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer.create(_config(tiny_model_dir, run, iterations=1, stage1_steps=1, stage2_steps=1,
                                     report_to=["tensorboard"]))
    trainer.train()
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("stage", "iteration", "loss", "grad_norm", "reward_t1", "reward_t2", "kl_t1", "kl_t2", "delta",
                "delta_i2c", "delta_c2i", "edit_distance_ratio", "copy_rate", "tokens_per_s",
                "time_generate_s", "time_train_s"):
        assert key in row, key
    assert row["delta"] == pytest.approx(row["delta_i2c"] - row["delta_c2i"])
    assert (run / "config.yaml").is_file() and (run / "training_curves.png").is_file()
    assert any((run / "tensorboard").iterdir())
    assert json.loads((run / "eval" / "metrics.json").read_text())["n"] == 2
    assert not (run / "best.json").exists()             # eval_every 0: no validation, so no best checkpoint
    from selfcorrect.models import load_model

    model = load_model(str(run / "checkpoint-2"), dtype="float32")     # a Hugging Face directory
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in trainer.policy.parameters())
    with pytest.raises(ConfigError, match="not empty"):
        Trainer.create(_config(tiny_model_dir, run))


def test_non_finite_loss_skips_the_step(tiny_model_dir, tmp_path, monkeypatch):
    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "run"))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}

    def nan_loss(config, phase, score, policy, *args, **kwargs):
        p = next(policy.parameters())
        nan = (p.sum() * float("nan"))
        return LossOutput(loss=nan, advantages=torch.zeros(1, 2), kl=torch.zeros(1, 2), returns=torch.zeros(1, 2))

    monkeypatch.setattr("selfcorrect.trainer.step_loss", nan_loss)
    row = trainer.train_step()
    assert row["skipped"] and trainer.skipped == 1 and trainer.step == 1
    after = trainer.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not trainer.optimizer.state            # Adam's moments never saw the bad step


def test_resume_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        Trainer.resume(tmp_path)
    (tmp_path / "config.yaml").write_text("model: default\n")
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        Trainer.resume(tmp_path)


SHIPPED_TRAIN_CONFIGS = ["demo", "arithmetic", "strings", "testbed", "math", "humaneval", "mbpp"]
DEMO_BUDGET_CONFIGS = {"demo", "arithmetic", "strings", "testbed"}    # the demo's sizes and departures, not the paper's


def test_every_shipped_config_is_tested():
    from pathlib import Path

    shipped = {p.stem for p in (Path(__file__).resolve().parents[1] / "selfcorrect" / "configs").glob("*.yaml")}
    assert shipped == {*SHIPPED_TRAIN_CONFIGS, "eval"}


def _fixture_data(tmp_path, task: str, split: str) -> str:
    """A few rows of the file a shipped config expects (MBPP: one row per standard task-id range)."""
    if task == "mbpp":
        rows = [{"task_id": i, "text": f"Add two numbers ({i}).", "code": "def add(a, b):\n    return a + b\n",
                 "test_list": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]} for i in (11, 12, 511, 601, 602)]
    else:       # the training and the test file hold different problems, as a run requires
        rows = [{"problem": f"What is {i} + {i}? ({split})", "answer": str(2 * i)} for i in range(4)]
    path = tmp_path / f"{task}-{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("name", SHIPPED_TRAIN_CONFIGS)
@pytest.mark.long
def test_every_shipped_config_runs_a_step(name, tiny_model_dir, tmp_path):
    """The shipped YAML as a user runs it, with only size knobs, the model and its data files swapped in."""
    from pathlib import Path

    from selfcorrect.config import load_yaml

    path = Path(__file__).resolve().parents[1] / "selfcorrect" / "configs" / f"{name}.yaml"
    data = load_yaml(path)
    for key, task in (("task_options", data["task"]), ("eval_task_options", data.get("eval_task") or data["task"])):
        if "path" in data.get(key, {}):
            data[key] = {**data[key], "path": _fixture_data(tmp_path, task, key)}
    data.update(model=str(tiny_model_dir), out=str(tmp_path / "run"), iterations=1, stage1_steps=1, stage2_steps=0,
                problems_per_step=1, samples=2, max_new_tokens=4, eval_limit=1, eval_max_new_tokens=4,
                eval_every=0, save_every=0, generation_batch_size=4, micro_batch_problems=1, autocast="none",
                report_to=["none"])
    trainer = Trainer.create(TrainConfig(**data))
    row = trainer.train()
    assert trainer.step == 1 and row["final_eval"]["n"] == 1
    if name == "humaneval":     # trains on MBPP's train range, evaluates on HumanEval
        assert trainer.task.name == "mbpp" and {p.id for p in trainer.task.problems} == {"mbpp/601", "mbpp/602"}
        assert trainer.test_task.name == "humaneval"
    if name == "mbpp":
        assert {p.id for p in trainer.test_task.problems} == {"mbpp/11", "mbpp/12"}


@pytest.mark.parametrize("name", SHIPPED_TRAIN_CONFIGS)
def test_shipped_train_configs_are_valid(name):
    from pathlib import Path

    from selfcorrect.config import from_dict, load_yaml

    path = Path(__file__).resolve().parents[1] / "selfcorrect" / "configs" / f"{name}.yaml"
    config = from_dict(TrainConfig, load_yaml(path), str(path))
    assert config.total_steps >= 1
    if name not in DEMO_BUDGET_CONFIGS:      # the paper's hyperparameters
        assert config.temperature == 1.0 and config.alpha == 10.0 and config.beta1 == 0.01
        assert (config.lr, config.beta2) == ((5e-6, 0.1) if name == "math" else (1e-5, 0.25))


@pytest.mark.long
def test_cli_train_resume_and_errors(tiny_model_dir, tmp_path, parity_task, capsys):
    from selfcorrect.cli import main

    run = tmp_path / "cli-run"
    args = ["train", "--model", str(tiny_model_dir), "--task", parity_task, "--out", str(run),
            "--stage1-steps", "1", "--stage2-steps", "1", "--problems-per-step", "2", "--samples", "2",
            "--max-new-tokens", "3", "--eval-limit", "2", "--eval-max-new-tokens", "2", "--report-to", "none",
            "--autocast", "none"]
    assert main(args) == 0
    assert (run / "checkpoint-2" / "config.json").is_file()
    (run / "report.html").unlink()
    evaluated = (run / "eval" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0           # already complete: nothing to redo
    out = " ".join(capsys.readouterr().err.split())            # the console (stderr) wraps at 80 columns
    assert "is complete (2/2 steps): nothing to train" in out and "Acc@t1" in out and "wrote" in out, out
    assert (run / "report.html").is_file()                      # ends like a run: its table and report
    assert (run / "eval" / "metrics.json").stat().st_mtime_ns == evaluated   # the test split not re-run
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    for bad, message in [(["--lr", "-1"], "lr must be a positive"), (["--method", "star2"], "method"),
                         (["--samples", "1"], "samples >= 2"), (["--stage1-steps", "x"], "expected an integer")]:
        assert main(args[:-2] + ["--out", str(tmp_path / "never")] + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("selfcorrect: error:") and message in err[0], err
        assert not (tmp_path / "never").exists()
    assert main(args) == 2                                      # refuses to overwrite a run directory
    assert "not empty" in capsys.readouterr().err


# --------------------------------------------------------------------------- on-policy scoring and the gap check
def test_token_logprobs_score_the_tempered_distribution(tiny_model):
    from selfcorrect.logprobs import full_logits_logprobs, token_logprobs

    model, _ = tiny_model
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    labels = torch.zeros_like(ids, dtype=torch.bool)
    labels[:, 3:] = True
    with torch.no_grad():
        for temperature in (1.0, 0.7, 1.6):
            ours = token_logprobs(model, ids, mask, labels, temperature=temperature)
            full = full_logits_logprobs(model, ids, mask, labels, temperature=temperature)
            assert torch.allclose(ours, full, atol=1e-5), temperature
        assert not torch.allclose(token_logprobs(model, ids, mask, labels, temperature=0.7),
                                  token_logprobs(model, ids, mask, labels), atol=1e-3)


def test_logit_rescaling_models_are_scored_like_their_forward(tiny_model):
    """Cohere multiplies its logits by logit_scale, Granite divides by logits_scaling: scored the same way."""
    from selfcorrect.logprobs import logit_transform

    assert logit_transform(type("C", (), {"logit_scale": 0.0625})()) == (None, 0.0625)
    assert logit_transform(type("G", (), {"logits_scaling": 8.0})()) == (None, 0.125)
    assert logit_transform(type("Gemma", (), {"final_logit_softcapping": 30.0})()) == (30.0, 1.0)


def _gap_rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.long
def test_the_sampler_and_the_trainer_agree_at_the_sampling_temperature(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer.create(_config(tiny_model_dir, run, iterations=1, stage1_steps=1, stage2_steps=1,
                           temperature=0.7, eval_limit=1)).train()
    rows = _gap_rows(run)
    for row in rows:
        for k in (1, 2):
            assert row[f"logp_gap_mean_t{k}"] < 1e-4 and row[f"logp_gap_max_t{k}"] < 1e-3, row
            assert row[f"importance_ratio_t{k}"] == pytest.approx(1.0, abs=1e-3)
    assert "off-policy" not in capsys.readouterr().err


@pytest.mark.long
def test_a_wrong_temperature_fires_the_gap_warning(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Rollouts sampled at 1.5 but scored at 0.7: the check must catch it, once."""
    from selfcorrect.rollout import SamplingParams

    monkeypatch.setattr(TrainConfig, "sampling_params",
                        lambda self: SamplingParams(temperature=1.5, max_new_tokens=self.max_new_tokens))
    run = tmp_path / "run"
    Trainer.create(_config(tiny_model_dir, run, iterations=1, stage1_steps=1, stage2_steps=1,
                           temperature=0.7, eval_limit=1)).train()
    rows = _gap_rows(run)
    assert all(row["logp_gap_mean_t1"] > 0.05 for row in rows), rows
    # (The mean importance ratio is 1 in expectation under any sampler, so it is logged, not asserted.)
    err = capsys.readouterr().err
    assert err.count("off-policy") == 1 and "logprob_gap_warn" in err


def test_training_refuses_truncated_sampling_and_maps_the_old_kl_name():
    with pytest.raises(ConfigError, match="top_p=0.9.*untruncated"):
        TrainConfig(top_p=0.9)
    with pytest.raises(ConfigError, match="top_k=5"):
        TrainConfig(top_k=5)
    assert TrainConfig().kl_in == "reward"
    assert TrainConfig(kl_in="loss").kl_in == "loss-k3"      # configs written before the rename


# --------------------------------------------------------------------------- dropout off while scoring
def _dropout_model_dir(tmp_path, tokenizer, kind: str):
    """A tiny random model with heavy dropout: Llama (a float attention rate) or GPT-2 (nn.Dropout modules)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from tests.conftest import TINY_CONFIG

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**ids, **TINY_CONFIG, attention_dropout=0.5))
    else:
        model = GPT2LMHeadModel(GPT2Config(**ids, n_embd=32, n_layer=2, n_head=2, n_positions=1024,
                                           resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5))
    path = tmp_path / kind
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_dropout_disabled_scores_the_eval_model_with_checkpointing_on(kind, tmp_path, default_tokenizer):
    from selfcorrect.logprobs import dropout_disabled, token_logprobs
    from selfcorrect.models import load_model

    model = load_model(str(_dropout_model_dir(tmp_path, default_tokenizer, kind)), dtype="float32")
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    mask, labels = torch.ones_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    labels[:, 4:] = True

    def scored():
        model.zero_grad(set_to_none=True)
        logp = token_logprobs(model, ids, mask, labels)
        logp.sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters()]

    model.eval()
    want, want_grads = scored()                               # no dropout, no checkpointing
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    noisy, _ = scored()
    assert not torch.allclose(noisy, want, atol=1e-3)         # dropout is on in train mode
    with dropout_disabled(model):
        got, grads = scored()                                 # the checkpointed backward recomputes in the block
    assert model.training and torch.equal(got, want)
    for g, w in zip(grads, want_grads):
        assert torch.allclose(g, w, atol=1e-6)
    assert not torch.allclose(scored()[0], want, atol=1e-3)   # rates restored on exit


@pytest.mark.long
def test_a_dropout_model_is_trained_on_policy(tmp_path, default_tokenizer, capsys):
    """Rollouts are sampled without dropout; training must score them the same way (the gap check sees it)."""
    model_dir = _dropout_model_dir(tmp_path, default_tokenizer, "llama")
    run = tmp_path / "run"
    Trainer.create(_config(model_dir, run, iterations=1, stage1_steps=1, stage2_steps=1, eval_limit=1,
                           gradient_checkpointing=True)).train()
    for row in _gap_rows(run):
        for k in (1, 2):
            assert row[f"logp_gap_max_t{k}"] < 1e-3, row
    assert "off-policy" not in capsys.readouterr().err


@pytest.mark.long
def test_adam_and_the_lr_schedule_carry_on_across_stage_and_iteration_boundaries(tiny_model_dir, tmp_path):
    """The choice documented in docs/training.md: one optimizer run over Stage I → II → I → II, no reset."""
    run = tmp_path / "run"
    trainer = Trainer.create(_config(tiny_model_dir, run, warmup_steps=4, eval_limit=1))   # stages 2+1, twice
    trainer.train()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["stage"]) for r in rows] == [(1, 1), (1, 1), (1, 2), (2, 1), (2, 1), (2, 2)]
    assert [r["lr"] for r in rows] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    applied = sum(not r["skipped"] for r in rows)
    assert applied >= 5 and {int(s["step"]) for s in trainer.optimizer.state.values()} == {applied}


@pytest.mark.long
def test_a_run_whose_output_is_a_file_prints_a_plain_line_per_step(tiny_model_dir, tmp_path, parity_task):
    """No TTY (a cluster job's log, `make demo > log`): one flushed plain line per step, no rich redraws."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "selfcorrect.cli", "train", "--model", str(tiny_model_dir), "--task",
                           parity_task, "--out", str(run), "--stage1-steps", "2", "--stage2-steps", "1",
                           "--problems-per-step", "2", "--samples", "2", "--max-new-tokens", "3", "--eval-limit", "1",
                           "--eval-max-new-tokens", "2", "--report-to", "none", "--autocast", "none",
                           "--temperature", "0.7", "--compare-base"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the evaluations inside the run report progress too: the base model's, then the final one
    evaluations = [line for line in done.stderr.splitlines() if line.startswith("test evaluation at step")]
    assert [e.split("  ")[0] for e in evaluations] == [       # one line per batch, counting problems per attempt
        "test evaluation at step 0, attempt 1/2: 1/1 (100%)", "test evaluation at step 0, attempt 2/2: 1/1 (100%)",
        "test evaluation at step 3, attempt 1/2: 1/1 (100%)", "test evaluation at step 3, attempt 2/2: 1/1 (100%)"]
    assert all("elapsed, ETA" in e for e in evaluations)
    # the base-vs-trained table comes as markdown, its ten columns whole (a rich table would cut them)
    assert "| Method | Acc@t1 | Acc@t2 |" in done.stderr and "| Format@t1 | Format@t2 |" in done.stderr
    assert "| base (prompting only) |" in done.stderr
    # no library floods (DeepSpeed, imported by accelerate when a model is saved, warns on stdout)
    assert "Setting accelerator" not in done.stdout + done.stderr and "Warning" not in done.stderr
    assert (run / "report.html").is_file() and (run / "eval" / "report.html").is_file()
    lines = [line for line in done.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    first, last = lines[0], lines[-1]
    assert "it1 stage1" in first and "r1=" in first and "r2=" in first and "Δ=" in first and "kl2=" in first
    assert "gap=" in first and "s/step, ETA" in first and "it1 stage2" in last and "ETA 0:00:00" in last
    assert "\x1b[" not in done.stderr                            # no terminal control codes in a log file


# --------------------------------------------------------------------------- TensorBoard and W&B names
@pytest.mark.long
def test_tensorboard_scalars_are_named_like_the_metrics_jsonl_keys(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    Trainer.create(_config(tiny_model_dir, run, iterations=1, stage1_steps=1, stage2_steps=1, eval_limit=1,
                           report_to=["tensorboard"])).train()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numeric.discard("step")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == numeric
    assert {"reward_t1", "reward_t2", "kl_t1", "delta", "loss", "time_generate_s", "time_backward_s"} <= tags
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in rows]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


def test_wandb_logs_offline_and_a_resume_continues_the_same_run(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'selfcorrect[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    Trainer.create(_config(tiny_model_dir, run, iterations=1, stage1_steps=1, stage2_steps=1, eval_limit=1,
                           report_to=["wandb"], save_every=1)).train()
    run_id = (run / "wandb-id.txt").read_text().strip()
    assert any(p.name.endswith(run_id) for p in (run / "wandb").glob("offline-run-*"))
    Trainer.resume(run, overrides={"iterations": 2}).train()
    assert (run / "wandb-id.txt").read_text().strip() == run_id


@pytest.mark.long
def test_base_first_attempts_are_prompts_from_the_initial_model_and_never_trained(tiny_model_dir, tmp_path):
    """base_first_attempts (paper §5.3): in Stage II the first attempts of a share of the problems come from
    π_ref; the policy writes every later attempt; the offline attempts get neither gradient nor KL."""
    from selfcorrect.rollout import sample_episodes
    from selfcorrect.training.step import step_loss

    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "run", stage1_steps=0, stage2_steps=1,
                                     iterations=1, base_first_attempts=0.5, temperature=1.0))
    with torch.no_grad():                                  # a policy that samples differently from π_ref
        for p in trainer.policy.parameters():
            p.add_(0.5 * torch.randn_like(p))
    problems = trainer.task.problems[:2]
    episodes = trainer._rollout(problems, attempts=2, base_share=0.5)
    seed = trainer.config.seed * 1_000_003 + trainer.step
    params = trainer.config.sampling_params()
    from_base = sample_episodes(trainer._base_backend, trainer.builder, trainer.task, problems, samples=2, attempts=1,
                                params=params, per_row_seed=seed)
    from_policy = sample_episodes(trainer.backend, trainer.builder, trainer.task, problems, samples=2, attempts=1,
                                  params=params, per_row_seed=seed)
    assert [ep.attempts[0].offline for ep in episodes] == [True, True, False, False]
    assert [ep.attempts[0].ids for ep in episodes[:2]] == [ep.attempts[0].ids for ep in from_base[:2]]
    assert [ep.attempts[0].ids for ep in episodes[2:]] == [ep.attempts[0].ids for ep in from_policy[2:]]
    assert [ep.attempts[0].ids for ep in from_base] != [ep.attempts[0].ids for ep in from_policy]
    assert all(ep.attempts[0].sample_logprobs is None for ep in episodes[:2])
    assert all(ep.attempts[1].sample_logprobs is not None for ep in episodes)   # attempt 2: the policy's

    kept = {}

    def scorer(model, *args, **kwargs):                   # keep the policy's log-probs to read their gradient
        logp = trainer.engine.token_logprobs(model, *args, **kwargs)
        if model is trainer.policy:
            logp.retain_grad()
            kept["logp"] = logp
        return logp

    phase = trainer.config.schedule()[0]
    out = step_loss(trainer.config, phase, scorer, trainer.policy, trainer.reference, trainer.anchor, episodes,
                    trainer.tokenizer.pad_token_id, len(episodes), trainer.device, trainer.beta2)
    out.loss.backward()
    grad = kept["logp"].grad                              # [B, T]
    for row, ep in enumerate(episodes):
        first, second = ep.attempts
        assert bool(grad[row, first.start:first.end].abs().sum() == 0) == first.offline
        assert float(out.kl[row, 0]) == 0.0 or not first.offline
    assert any(bool(grad[row, ep.attempts[1].start:ep.attempts[1].end].abs().sum() > 0) for row, ep in enumerate(episodes))
    trainer.policy.zero_grad()
    assert trainer.train()["final_eval"]["n"] == 2 and trainer.step == 1   # and a whole run takes it


def test_base_first_attempts_refuses_layouts_without_a_full_reference():
    with pytest.raises(ConfigError, match="base_first_attempts samples first attempts from a full frozen copy"):
        TrainConfig(base_first_attempts=0.5, lora_r=8)
    with pytest.raises(ConfigError, match=r"base_first_attempts must be in \[0, 1\]"):
        TrainConfig(base_first_attempts=1.5)


@pytest.mark.long
def test_adaptive_beta2_moves_and_resumes_exactly(tiny_model_dir, tmp_path, parity_task, interrupt_training):
    """adaptive_beta2: Stage I rows log the β2 they used; it moves from step to step, is checkpointed, and a
    resumed run continues the same sequence; without it β2 stays fixed."""
    def run(out, **kw):
        return _config(tiny_model_dir, out, task=parity_task, iterations=2, stage1_steps=2, stage2_steps=1,
                       save_every=1, temperature=1.0, **kw)

    def betas(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("beta2")) for r in rows]

    Trainer.create(run(tmp_path / "fixed")).train()
    assert betas(tmp_path / "fixed") == [(1, 0.1), (2, 0.1), (3, None), (4, 0.1), (5, 0.1), (6, None)]
    Trainer.create(run(tmp_path / "straight", adaptive_beta2=True)).train()
    straight = betas(tmp_path / "straight")
    assert straight[0] == (1, 0.1) and len({b for _, b in straight if b is not None}) == 4   # moved every time
    interrupted = Trainer.create(run(tmp_path / "resumed", adaptive_beta2=True))
    interrupt_training(interrupted, 4)
    Trainer.resume(tmp_path / "resumed").train()
    assert betas(tmp_path / "resumed") == straight


@pytest.mark.parametrize("anchor", ["iteration", "reference"])
@pytest.mark.long
def test_stage1_anchor_and_the_kl_to_the_reference_beside_it(anchor, tiny_model_dir, tmp_path, parity_task):
    trainer = Trainer.create(_config(tiny_model_dir, tmp_path / "r", parity_task, stage1_anchor=anchor,
                                     stage1_kl_in="loss-k2"))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    stage1 = [r for r in rows if r["phase"] == "stage1"]
    assert all("kl_ref_t1" in r for r in stage1) and not any("kl_ref_t1" in r for r in rows if r["phase"] != "stage1")
    first, second = [r for r in stage1 if r["iteration"] == 1], [r for r in stage1 if r["iteration"] == 2]
    assert all(r["kl_ref_t1"] == r["kl_t1"] for r in first)              # iteration 1: the anchor is π_ref
    if anchor == "reference":
        assert trainer.anchor is trainer.reference
        assert all(r["kl_ref_t1"] == r["kl_t1"] for r in second)
    else:                                                                # pinned to the iteration's start
        assert trainer.anchor is not trainer.reference
        assert all(r["kl_ref_t1"] != r["kl_t1"] for r in second)


def test_stage1_option_values_are_checked():
    with pytest.raises(ConfigError, match="stage1_anchor"):
        TrainConfig(stage1_anchor="start")
    with pytest.raises(ConfigError, match="stage1_kl_in"):
        TrainConfig(stage1_kl_in="loss")
