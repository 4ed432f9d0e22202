"""Data-parallel training: 2 CPU processes (gloo, via `accelerate launch`) == 1 process on the same global batch.

Replicated (``sharding: none``) and sharded (FSDP2 ZeRO-2/3 layouts, launched
with the shipped ``fsdp_zero{2,3}.yaml`` made to run on CPUs) runs, and a
sharded run resumed from a checkpoint that holds a Stage I anchor.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfcorrect.distributed import DataParallel

CONFIGS = Path(__file__).resolve().parents[1] / "selfcorrect" / "configs" / "accelerate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.long
def test_two_processes_equal_one_process(tiny_model_dir, tmp_path, parity_task):
    args = ["train", "--model", str(tiny_model_dir), "--task", parity_task, "--stage1-steps", "1",
            "--stage2-steps", "1", "--problems-per-step", "4", "--samples", "2", "--max-new-tokens", "4",
            "--eval-limit", "2", "--eval-max-new-tokens", "2", "--report-to", "none", "--autocast", "none",
            "--lr", "1e-3", "--temperature", "1.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "selfcorrect.cli", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu.yaml"),
                "--main_process_port", str(_free_port()), "-m", "selfcorrect.cli"]
    two = subprocess.run([*launcher, *args, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "checkpoint-2" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint-2" / "model.safetensors"))
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert max((a[k] - initial[k]).abs().max().item() for k in a) > 1e-4      # the step did something
    # Two processes sum the gradient in another order than one; Adam turns that float noise into ~1e-3 of an
    # update (measured 2026-12-02: 2.9e-6 for updates of 2e-3; the losses and grad norms agree to 1e-6
    # relative).  (Before 2026-12-02 cpu.yaml used accelerate's MULTI_CPU type, which starts ONE process:
    # this test compared a run with itself.)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key
    rows = [[json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("one", "two")]
    assert all(r1["grad_norm"] == pytest.approx(r2["grad_norm"], rel=1e-5) for r1, r2 in zip(*rows))
    # only the main process wrote logs: one row per step
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2


def test_single_process_world():
    dp = DataParallel(cpu=True)
    assert (dp.rank, dp.world, dp.main) == (0, 1, True)
    assert dp.shard([1, 2, 3]) == [1, 2, 3] and dp.gather([4]) == [4] and dp.sum(2.5) == 2.5


@pytest.mark.parametrize("name", ["multi_gpu", "multi_node", "cpu", "fsdp_zero2", "fsdp_zero3", "deepspeed_zero2",
                                  "deepspeed_zero3"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.num_processes >= 2
    if name == "cpu":     # two real processes on CPUs (accelerate's MULTI_CPU type would start only one)
        assert config.use_cpu
    kind = {"cpu": "GPU", "fsdp_zero2": "FSDP", "fsdp_zero3": "FSDP", "deepspeed_zero2": "DEEPSPEED",
            "deepspeed_zero3": "DEEPSPEED"}.get(name, "GPU")
    assert str(config.distributed_type).endswith(kind)
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_reshard_after_forward"] == (name == "fsdp_zero3")
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
        assert config.deepspeed_config["offload_optimizer_device"] == "none"


LAUNCHER_ENV = ("ACCELERATE_USE_FSDP", "FSDP_RESHARD_AFTER_FORWARD", "FSDP_SHARDING_STRATEGY", "ACCELERATE_USE_DEEPSPEED",
                "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")


@pytest.mark.parametrize("env, expected", [
    ({}, ("none", "fsdp")),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_RESHARD_AFTER_FORWARD": "true"}, ("zero3", "fsdp")),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_RESHARD_AFTER_FORWARD": "false"}, ("zero2", "fsdp")),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}, ("zero2", "fsdp")),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, ("zero3", "fsdp")),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, ("zero3", "deepspeed")),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
      "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none"}, ("zero2", "deepspeed")),
])
def test_sharding_follows_the_launcher(env, expected, monkeypatch):
    from selfcorrect.engines import sharding_from_launcher

    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert sharding_from_launcher("none", "fsdp") == expected
    assert sharding_from_launcher("zero2", "fsdp") == ("zero2", "fsdp")          # an explicit setting wins
    assert sharding_from_launcher("zero3", "deepspeed") == ("zero3", "deepspeed")


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}, "ZeRO stage 1 is not supported"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu"},
     "OFFLOAD_PARAM_DEVICE=cpu\\) is not supported"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"},
     "DeepSpeed JSON config .* is not read"),
])
def test_deepspeed_launch_settings_we_do_not_drive_are_errors(env, message, monkeypatch):
    from selfcorrect.errors import ConfigError
    from selfcorrect.engines import sharding_from_launcher

    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        sharding_from_launcher("none", "fsdp")


def test_bad_sharding_is_a_clear_error(monkeypatch, tiny_model_dir, tmp_path):
    from selfcorrect.errors import ConfigError
    from selfcorrect.engines import sharding_from_launcher
    from selfcorrect.trainer import TrainConfig, Trainer

    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="sharding must be one of none, zero2, zero3"):
        TrainConfig(sharding="zero1")
    with pytest.raises(ConfigError, match="sharding_engine must be one of fsdp, deepspeed"):
        TrainConfig(sharding="zero3", sharding_engine="megatron")
    with pytest.raises(ConfigError, match="LoRA with DeepSpeed sharding is not supported"):
        TrainConfig(sharding="zero3", sharding_engine="deepspeed", lora_r=8)
    TrainConfig(sharding="zero3", lora_r=8)                   # LoRA on FSDP2 shards
    with pytest.raises(ConfigError, match="rollout_backend vllm cannot be combined with sharding"):
        TrainConfig(sharding="zero2", rollout_backend="vllm")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "HYBRID_SHARD")
    with pytest.raises(ConfigError, match="HYBRID_SHARD is not supported"):
        sharding_from_launcher("none", "fsdp")
    monkeypatch.delenv("FSDP_SHARDING_STRATEGY")          # sharding chosen by the launcher, vLLM by the config
    with pytest.raises(ConfigError, match="rollout_backend vllm cannot be combined with sharding"):
        Trainer.create(TrainConfig(model=str(tiny_model_dir), out=str(tmp_path / "v"), rollout_backend="vllm",
                                   task_options={"n": 4}, report_to=["none"]))
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(ConfigError, match="launch with `accelerate launch` or `torchrun`"):
        Trainer.create(TrainConfig(model=str(tiny_model_dir), out=str(tmp_path / "r"), sharding="zero3",
                                   task_options={"n": 4}, report_to=["none"]))


def _cpu_launch_config(name: str, tmp_path: Path) -> Path:
    """A shipped GPU config made to run 2 processes on this CPU (everything else as shipped)."""
    import yaml

    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config.update(num_processes=2, use_cpu=True)
    config.pop("gpu_ids", None)
    path = tmp_path / f"{name}-cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


SHARDED_ARGS = ["train", "--iterations", "3", "--stage1-steps", "2", "--stage2-steps", "1", "--problems-per-step", "8",
                "--samples", "2", "--micro-batch-problems", "1", "--seed", "3", "--max-new-tokens", "4",
                "--eval-limit", "2", "--eval-max-new-tokens", "2", "--report-to", "none", "--autocast", "none",
                "--lr", "1e-3", "--temperature", "1.0", "--save-every", "4", "--keep-last", "3",
                "--logprob-chunk", "3"]     # processes score different numbers of chunks (ZeRO-3 collectives)


def _run(command, out=None):
    done = subprocess.run([*command, *([] if out is None else ["--out", str(out)])], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _launched(name: str, tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(_cpu_launch_config(name, tmp_path)), "--main_process_port", str(_free_port()), "-m", "selfcorrect.cli"]


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir, tmp_path_factory):
    """``run(dtype) -> (args, run dir)``: the unsharded single-process run every sharded run is compared with
    (run once per dtype)."""
    from conftest import PARITY_TASK

    done: dict[str, tuple[list[str], Path]] = {}

    def run(dtype: str) -> tuple[list[str], Path]:
        if dtype not in done:
            root = tmp_path_factory.mktemp(f"one-process-{dtype}")
            (root / "parity_task.py").write_text(PARITY_TASK)
            args = [*SHARDED_ARGS, "--model", str(tiny_model_dir), "--task", f"{root / 'parity_task.py'}:make_task",
                    "--dtype", dtype]
            _run([sys.executable, "-m", "selfcorrect.cli", *args], root / "one")
            done[dtype] = args, root / "one"
        return done[dtype]
    return run


@pytest.mark.parametrize("engine", ["fsdp", "deepspeed"])
@pytest.mark.long
def test_sharded_two_processes_equal_one_process_and_resume(engine, one_process_run, tiny_model_dir, tmp_path):
    """ZeRO-3 and ZeRO-2 layouts (FSDP2 or DeepSpeed, 2 processes) == 1 replicated process; a sharded resume == straight.

    9 steps, 3 iterations: iteration 2's Stage I (steps 4-5) builds a sharded anchor, iteration 3's (steps 7-8)
    refills it; the resume starts inside iteration 2's Stage I, from checkpoint-4 (which holds the anchor).
    Seed 3 draws a problem twice in step 2, on the same process, leaving it a micro-batch short: the
    padding pass must keep the collectives aligned.
    """
    if engine == "deepspeed":
        pytest.importorskip("deepspeed")
    # FSDP2 runs in float64, where the order of reductions is the only difference from one process: in float32
    # that order's noise, which Adam amplifies where gradients are tiny, reached 1.1e-5 on one machine and more
    # than 3e-5 on another (the tied embedding).  DeepSpeed keeps flat float32 partitions: float32 there.
    dtype = {"fsdp": "float64", "deepspeed": "float32"}[engine]
    args, one_dir = one_process_run(dtype)

    def weights(run_dir):
        return load_file(str(run_dir / "checkpoint-9" / "model.safetensors"))

    def rows(run_dir):
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    _run([*_launched(f"{engine}_zero3", tmp_path), *args], tmp_path / "zero3")
    _run([*_launched(f"{engine}_zero2", tmp_path), *args], tmp_path / "zero2")
    # resume the ZeRO-3 run after step 4 (inside iteration 2's Stage I: its checkpoint holds the anchor)
    shutil.copytree(tmp_path / "zero3", tmp_path / "resumed")
    for later in ("checkpoint-8", "checkpoint-9"):
        shutil.rmtree(tmp_path / "resumed" / later)
    assert (tmp_path / "resumed" / "checkpoint-4" / "anchor.safetensors").is_file()
    _run([*_launched(f"{engine}_zero3", tmp_path), "train", "--resume", str(tmp_path / "resumed")])

    one = weights(one_dir)
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    update = max((one[k] - initial[k].to(one[k].dtype)).abs().max().item() for k in one)
    assert update > 1e-4                                                         # training did something
    # The tolerance is relative to the largest update (8.7e-3 here): 1e-3 of it for FSDP2 in float64, where
    # the reduction order leaves 5.8e-8 (measured 2026-12-07; the float32 noise above is 100x more), and a
    # flat 3e-5 for DeepSpeed in float32 (bucketed reductions measured 1.2e-5).  A real fault is far
    # larger: a stale anchor is off by 1e-4, a lost micro-batch or a wrong gradient scale by more.
    tolerance = {"fsdp": 1e-3 * update, "deepspeed": 3e-5}[engine]
    for other in ("zero3", "zero2", "resumed"):
        theirs = weights(tmp_path / other)
        assert theirs.keys() == one.keys(), other
        for key in one:
            assert torch.allclose(one[key], theirs[key], atol=tolerance, rtol=0), (other, key)
        # Adam and clipping hide a constant gradient factor; the logged (pre-clip) norms do not.  (Float noise
        # reaches 2e-4 relative by step 9; a wrong scale or a lost micro-batch is off by far more.)
        for a, b in zip(rows(one_dir), rows(tmp_path / other), strict=True):
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3), (other, a["step"])
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-6), (other, a["step"])
    if engine == "deepspeed":   # DeepSpeed's per-process checkpoint resumes only the way it was written
        assert (tmp_path / "zero3" / "checkpoint-9" / "deepspeed").is_dir()
        one_process_deepspeed = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
        for launch, env, message in (
                ([sys.executable, "-m", "selfcorrect.cli"], {},
                 "written with DeepSpeed, this launch runs without sharding"),
                ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                  str(_free_port()), "-m", "selfcorrect.cli"], one_process_deepspeed,
                 "resumes on the number of processes that wrote it \\(2\\), not 1"),
                (_launched("deepspeed_zero2", tmp_path), {},
                 "its DeepSpeed checkpoint is ZeRO stage 3, this launch runs stage 2")):
            done = subprocess.run([*launch, "train", "--resume", str(tmp_path / "zero3")], capture_output=True,
                                  text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)
            assert done.returncode != 0 and re.search(message, done.stderr), done.stderr[-3000:]
            assert "Traceback" not in done.stderr or "selfcorrect.cli" != launch[2]    # (a launcher's own)


@pytest.mark.parametrize("engine", ["fsdp", "deepspeed"])
@pytest.mark.long
def test_sharded_star_equals_one_process(engine, tiny_model_dir, tmp_path, parity_task):
    """The SFT path (STaR: collect, filter, restart from the initial model, supervised steps) under FSDP2's ZeRO-3
    layout == 1 process; DeepSpeed refuses STaR at start.

    Each round collects 8 of the task's 12 problems, so the second round crosses an epoch and draws
    some problems twice: the gathered dataset must still be in one process's order.
    """
    args = ["train", "--model", str(tiny_model_dir), "--task", parity_task, "--method", "star",
            "--star-rounds", "2", "--sft-steps", "1", "--sft-batch-episodes", "4", "--sft-keep", "D+",
            "--stage1-steps", "1", "--stage2-steps", "1", "--problems-per-step", "8", "--samples", "2",
            "--max-new-tokens", "4", "--eval-limit", "2", "--eval-max-new-tokens", "2", "--report-to", "none",
            "--autocast", "none", "--lr", "1e-3", "--temperature", "1.0"]    # round 2 redraws problems
    if engine == "deepspeed":
        pytest.importorskip("deepspeed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = _launched(f"{engine}_zero3", tmp_path)
    if engine == "deepspeed":       # STaR restarts each round from the initial model: not with DeepSpeed yet
        done = subprocess.run([*launcher, *args, "--out", str(tmp_path / "ds")], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode != 0 and "method star restarts each round" in done.stderr, done.stderr[-3000:]
        return
    for command, out in (([sys.executable, "-m", "selfcorrect.cli"], "one"), (launcher, "zero3")):
        done = subprocess.run([*command, *args, "--out", str(tmp_path / out)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    from selfcorrect.checkpoint import latest_checkpoint

    one = load_file(str(latest_checkpoint(tmp_path / "one") / "model.safetensors"))
    zero3 = load_file(str(latest_checkpoint(tmp_path / "zero3") / "model.safetensors"))
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert max((one[k] - initial[k]).abs().max().item() for k in one) > 1e-4     # the SFT steps trained
    # Reduce-scatter sums in another order than one process; Adam turns that float noise into
    # ~1e-3 of an update (measured: 1.8e-5 for updates of 2e-2 at lr 1e-2).
    for key in one:
        assert torch.allclose(one[key], zero3[key], atol=1e-5, rtol=0), key


NAN_STEP_SCRIPT = '''
import dataclasses, json, sys
import torch
import selfcorrect.trainer as T
from selfcorrect.engines import deepspeed as ds

model, task, out, stage = sys.argv[1:5]
trainer = T.Trainer.create(T.TrainConfig(
    model=model, task=task, out=out, sharding=stage, sharding_engine="deepspeed", temperature=1.0,
    iterations=1, stage1_steps=3, stage2_steps=0, problems_per_step=4, samples=2, max_new_tokens=4,
    micro_batch_problems=1, autocast="none", report_to=["none"], lr=1e-3, eval_limit=1))

def weights():
    full = ds.full_state_dict(trainer.engine.engine)
    return full if full is not None else {k: v.clone() for k, v in trainer.policy.state_dict().items()}

def changed(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)

start = weights()
trainer.train_step()
before = weights()
original = T.step_loss
def inf_loss(*args, **kwargs):      # a real loss plus an infinite constant: its gradients stay finite
    out = original(*args, **kwargs)
    return dataclasses.replace(out, loss=out.loss + float("inf"))
T.step_loss = inf_loss
bad = trainer.train_step()
after_bad = weights()
T.step_loss = original
good = trainer.train_step()
print("RESULT", json.dumps({"first": changed(start, before), "bad_skipped": bad["skipped"],
                            "bad_change": changed(before, after_bad), "skipped": trainer.skipped,
                            "good_skipped": good["skipped"], "good_change": changed(after_bad, weights())}))
'''


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.long
def test_deepspeed_skips_a_step_with_a_non_finite_loss(stage, tiny_model_dir, tmp_path, parity_task):
    """An infinite loss (with finite gradients) leaves weights untouched under DeepSpeed, and the next step trains."""
    pytest.importorskip("deepspeed")
    script = tmp_path / "nan_step.py"
    script.write_text(NAN_STEP_SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                           str(_free_port()), str(script), str(tiny_model_dir), parity_task, str(tmp_path / "run"),
                           stage],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["first"] > 1e-6                                   # a normal step trains
    assert result["bad_skipped"] and result["skipped"] == 1
    assert result["bad_change"] == 0.0                              # the poisoned step changed nothing
    assert not result["good_skipped"] and result["good_change"] > 1e-6    # and left no stale gradients behind


@pytest.mark.long
def test_ctrl_c_stops_a_sharded_run_between_steps_with_a_checkpoint(tiny_model_dir, tmp_path, parity_task):
    """Ctrl-C (SIGINT to the launcher's whole process group, as a terminal sends it) in a 2-process ZeRO-3 run:
    both processes finish their step, checkpoint it together and exit — no hang mid-collective."""
    import signal
    import time

    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--task", parity_task, "--stage1-steps", "200",
            "--stage2-steps", "0", "--problems-per-step", "4", "--samples", "2", "--max-new-tokens", "4",
            "--report-to", "none", "--autocast", "none", "--out", str(out)]
    proc = subprocess.Popen([*_launched("fsdp_zero3", tmp_path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    from selfcorrect.checkpoint import latest_checkpoint, load_state

    assert proc.returncode != 0 and "stopped by SIGINT after step" in stderr, stderr[-3000:]
    assert f"continue with: selfcorrect train --resume {out}" in stderr
    checkpoint = latest_checkpoint(out)
    step = load_state(checkpoint)["step"]
    assert 2 <= step < 200 and checkpoint.name == f"checkpoint-{step}"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == step        # every finished step logged
    assert (load_file(str(checkpoint / "model.safetensors")).keys() ==
        load_file(str(tiny_model_dir / "model.safetensors")).keys())


@pytest.mark.long
def test_sharded_lora_equals_one_process_and_resume(tiny_model_dir, tmp_path, parity_task):
    """LoRA on FSDP2 ZeRO-3 (2 processes) == LoRA on 1 process: adapters, merged export, a resume.

    The reference is the sharded policy with its adapter off; iterations 2 and 3 anchor attempt 1 to a
    sharded adapted copy (built, then refilled); checkpoints hold the gathered adapter.
    """
    args = [*SHARDED_ARGS, "--model", str(tiny_model_dir), "--task", parity_task, "--lora-r", "4"]
    _run([sys.executable, "-m", "selfcorrect.cli", *args], tmp_path / "one")
    _run([*_launched("fsdp_zero3", tmp_path), *args], tmp_path / "zero3")
    shutil.copytree(tmp_path / "zero3", tmp_path / "resumed")
    for later in ("checkpoint-8", "checkpoint-9", "merged"):
        shutil.rmtree(tmp_path / "resumed" / later)
    _run([*_launched("fsdp_zero3", tmp_path), "train", "--resume", str(tmp_path / "resumed")])

    def adapter(run_dir):
        return load_file(str(run_dir / "checkpoint-9" / "adapter_model.safetensors"))

    one = adapter(tmp_path / "one")
    assert one and all("lora_" in key for key in one)
    assert max(t.abs().max().item() for k, t in one.items() if "lora_B" in k) > 1e-4     # B starts at 0
    merged_one = load_file(str(tmp_path / "one" / "merged" / "model.safetensors"))
    for other in ("zero3", "resumed"):
        theirs = adapter(tmp_path / other)
        assert theirs.keys() == one.keys(), other
        for key in one:
            assert torch.allclose(one[key], theirs[key], atol=1e-5, rtol=0), (other, key)
        merged = load_file(str(tmp_path / other / "merged" / "model.safetensors"))
        assert merged.keys() == merged_one.keys()
        for key in merged_one:
            assert torch.allclose(merged_one[key], merged[key], atol=1e-5, rtol=0), (other, key)


@pytest.mark.long
def test_sigterm_stops_a_two_process_run_between_steps_and_it_resumes_exactly(tiny_model_dir, tmp_path,
                                                                              parity_task):
    """A scheduler's SIGTERM reaching one process: both finish the step, checkpoint, exit; the resume is exact."""
    args = ["train", "--model", str(tiny_model_dir), "--task", parity_task, "--stage1-steps", "2",
            "--stage2-steps", "2", "--problems-per-step", "4", "--samples", "2", "--max-new-tokens", "4",
            "--eval-limit", "2", "--eval-max-new-tokens", "2", "--report-to", "none", "--autocast", "none",
            "--lr", "1e-3", "--temperature", "1.0"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu.yaml"),
                "--main_process_port", str(_free_port()), "-m", "selfcorrect.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SELFCORRECT_FAULT", None)
    straight = subprocess.run([*launcher, *args, "--out", str(tmp_path / "straight")], capture_output=True, text=True,
                              env=env, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = subprocess.run([*launcher, *args, "--out", str(tmp_path / "run")], capture_output=True, text=True,
                             env={**env, "SELFCORRECT_FAULT": "backward:3:TERM:1"}, timeout=300)  # rank 1 only
    # rank 1's 3rd backward is in step 3: both processes finish that step and stop after it
    assert stopped.returncode != 0 and "stopped by SIGTERM after step 3" in stopped.stderr, stopped.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint-3").is_dir() and not (tmp_path / "run" / "checkpoint-4").exists()
    launcher[launcher.index("--main_process_port") + 1] = str(_free_port())
    resumed = subprocess.run([*launcher, "train", "--resume", str(tmp_path / "run")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(tmp_path / "straight" / "checkpoint-4" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "checkpoint-4" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
