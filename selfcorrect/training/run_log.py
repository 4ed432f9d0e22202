"""A run's records: ``metrics.jsonl`` (always), TensorBoard and W&B (when asked for), samples and plots."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import to_dict
from ..errors import ConfigError
from ..results import episode_record


class RunLogger:
    """metrics.jsonl always; TensorBoard and W&B when asked for, under the same names.

    Every number of a step's row is a TensorBoard scalar and a W&B metric named exactly as its
    ``metrics.jsonl`` key (``reward_t1``, ``kl_t2``, ``delta``, ``time_generate_s``, ...; the list is in
    docs/training.md, "Run directory"), at the optimizer step as its step.
    """

    def __init__(self, run_dir: Path, config, resume: bool):
        self.path = run_dir / "metrics.jsonl"
        self.tensorboard = None
        self.wandb = None
        if "tensorboard" in config.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in config.report_to:
            try:
                import wandb
            except ImportError:
                raise ConfigError("report_to includes wandb but wandb is not installed: pip install wandb") from None
            # One W&B run per run directory: its id is kept there, so --resume continues the same W&B run
            # (WANDB_MODE=offline writes it under RUN/wandb/ for a later `wandb sync`).
            id_file = run_dir / "wandb-id.txt"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id + "\n")
            self.wandb = wandb.init(project="selfcorrect", name=run_dir.name, id=run_id, dir=str(run_dir),
                                    config=to_dict(config), resume="allow")

    def log(self, step: int, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **row}) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def log_samples(run_dir: Path, step: int, episodes: Sequence, count: int = 4) -> None:
    """Append the first ``count`` episodes of a step to ``samples.jsonl``."""
    with open(run_dir / "samples.jsonl", "a", encoding="utf-8") as fh:
        for ep in episodes[:count]:
            fh.write(json.dumps({"step": step, **episode_record(ep)}, ensure_ascii=False) + "\n")


def truncate_logs(run_dir: Path, step: int) -> None:
    """Drop the rows of ``metrics.jsonl`` and ``samples.jsonl``, and the periodic test evaluations
    (``test-evals/step-N``), written after the checkpoint a run resumes from (those steps are redone).  A torn
    last line -- the process died mid-write -- is dropped with a warning; any other unreadable line is an
    error naming it."""
    for evaluated in (run_dir / "test-evals").glob("step-*"):
        number = evaluated.name[len("step-"):]
        if number.isdigit() and int(number) > step:
            shutil.rmtree(evaluated)
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = run_dir / name
        if not path.is_file():
            continue
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ConfigError(f"{path}:{number}: not a JSON row; repair or remove the line") from None
                print(f"selfcorrect: warning: {path}:{number}: dropped a torn last line", file=sys.stderr)
                continue
            if row.get("step", 0) <= step:
                kept.append(line)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(r + "\n" for r in kept), encoding="utf-8")
        tmp.replace(path)


def plot_curves(run_dir: Path) -> None:
    from ..plots import plot_training_curves

    log = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if rows:
        plot_training_curves(rows, run_dir / "training_curves.png")
