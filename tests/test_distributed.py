"""Data-parallel training: 2 CPU processes (gloo, via `accelerate launch`) == 1 process on the same global batch."""

from __future__ import annotations

import os
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
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    # only the main process wrote logs: one row per step
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2


def test_single_process_world():
    dp = DataParallel(cpu=True)
    assert (dp.rank, dp.world, dp.main) == (0, 1, True)
    assert dp.shard([1, 2, 3]) == [1, 2, 3] and dp.gather([4]) == [4] and dp.sum(2.5) == 2.5


@pytest.mark.parametrize("name", ["multi_gpu", "multi_node", "cpu"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.num_processes >= 2
    assert str(config.distributed_type).endswith("CPU" if name == "cpu" else "GPU")
