"""``selfcorrect compare``: train several methods × seeds, evaluate them on the same problems, tabulate.

Layout of ``--out DIR``::

    DIR/<method>/seed-<s>/     a normal run directory (train + final eval in eval/)
    DIR/table.md, table.json   the paper's table: one row per method, episodes of all
                               seeds pooled, 95% CIs by a cluster bootstrap over problems
                               (Wilson for proportions when there is one seed)
    DIR/edit_ratio.png         edit-distance-ratio histograms per method (paper Fig. 4/5)
    DIR/training_curves.png    training reward at attempt 1 and 2 per method
    DIR/delta.png              Δ(t1, t2) per method with its 95% CI

A run whose ``eval/metrics.json`` exists is finished and skipped; a run with a
checkpoint is resumed; anything else starts over — so re-running a crashed
compare continues where it stopped.  Every method evaluates the same
``eval_limit`` problems of the same held-out split.

**Warm start** (``warm_start_steps``): before the methods, ``DIR/warm-start/seed-<s>/`` trains
single-turn RL on attempt 1 for that many steps, once per seed; its final model is then every method's
initial model *and* π_ref.  A small model mostly fails on the answer *form* at first, and whichever
method learns the form fastest then looks best; after a shared warm start a later Δ is correction, not
formatting.  The warm start's own episodes are the same for every method and are not counted in the
methods' budget; it is evaluated on the validation split (where the task has one), never on test.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics, plots, report
from .checkpoint import list_checkpoints
from .errors import ConfigError
from .files import atomic_write, read_jsonl, write_json
from .run_dir import check_output_dir
from .trainer import METHODS, TrainConfig, Trainer
from .training.config import OPERATIONAL, differing_fields


def method_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"star:sft_keep=D+"`` → ``("star", {"sft_keep": "D+"})``: a method and the settings only its runs
    change (a comparison row such as the paper's STaR D+; ``name:key=value:key=value``)."""
    name, *pairs = spec.split(":")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"method {spec!r}: expected name:key=value, got {pair!r}")
        overrides[key.strip().replace("-", "_")] = value.strip()
    return name.strip(), overrides


def method_config(base: TrainConfig, spec: str) -> TrainConfig:
    """``base`` with the method (and any per-method settings) of ``spec`` (:func:`method_spec`)."""
    from dataclasses import asdict

    from .config import from_dict

    name, overrides = method_spec(spec)
    return from_dict(TrainConfig, {**asdict(base), **overrides, "method": name}, f"--methods {spec}")


WARM_START = "warm-start"
"""The folder of a comparison's shared warm start (not a method)."""


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed-{seed}"


def methods_in(out: Path) -> list[str]:
    """The method folders under ``out`` (those holding a ``seed-*`` run), sorted by name."""
    return sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != WARM_START and any(p.glob("seed-*")))


def warm_start_config(base: TrainConfig, steps: int, seed: int, path: Path) -> TrainConfig:
    """The shared warm start of a comparison (module docstring): ``steps`` steps of single-turn RL from
    ``base``'s model, evaluated at the end on the validation split where the task has one."""
    from dataclasses import asdict

    from .config import from_dict
    from .tasks import accepts_option, load_task

    data = {**asdict(base), "method": "single-turn", "iterations": 1, "stage1_steps": 0, "stage2_steps": steps,
            "seed": seed, "out": str(path), "overwrite": True, "eval_every": 0, "test_every": 0, "probe": False}
    if accepts_option(base.task, "split") and "split" not in base.task_options:
        splits = load_task(base.task, **{**base.task_options, "split": base.train_split}).splits
        if base.validation_split in splits:          # never read the test split to make a starting point
            data.update(eval_task="", eval_task_options={}, eval_split=base.validation_split,
                        allow_train_test_overlap=True)
    return from_dict(TrainConfig, data, "warm start")


def _train_or_reuse(path: Path, config: TrainConfig, train: Callable[[Trainer], Any],
                    on_run: Callable[[str, int, str], None] | None, label: str) -> None:
    """Train the run in ``path`` -- or skip it (finished) or resume it (checkpointed); see the module docstring."""
    _same_settings(path, config)              # an earlier run in `out` is reused only if it is this one
    if (path / "eval" / "metrics.json").is_file():
        if on_run:
            on_run(label, config.seed, "finished earlier: skipped")
        return
    if list_checkpoints(path):
        if on_run:
            on_run(label, config.seed, "resuming")
        trainer = Trainer.resume(path)
    else:
        if on_run:
            on_run(label, config.seed, "training" if config.total_steps else "evaluating (no training steps)")
        trainer = Trainer.create(config)
    train(trainer)


def seed_samples(out: Path, method: str, seeds: Sequence[int]) -> list[dict[str, Any]] | None:
    """The method's evaluated episodes (``eval/samples.jsonl``) of all ``seeds``, in seed order; ``None``
    when any seed has no evaluation, so a partly run method is never pooled as if complete."""
    paths = [run_dir(out, method, s) / "eval" / "samples.jsonl" for s in seeds]
    if not all(path.is_file() for path in paths):
        return None
    return [row for path in paths for row in read_jsonl(path)]


def run_compare(base: TrainConfig, methods: Sequence[str], seeds: Sequence[int], out: Path,
                train: Callable[[Trainer], Any] | None = None,
                on_run: Callable[[str, int, str], None] | None = None, warm_start_steps: int = 0) -> dict[str, Any]:
    """Train/evaluate every (method, seed) not finished yet, then write the comparison; returns table.json.
    ``warm_start_steps``: the shared warm start of the module docstring (0 = none)."""
    unknown = [m for m in methods if method_spec(m)[0] not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if not methods or not seeds:
        raise ConfigError("compare needs at least one method and one seed")
    if not isinstance(warm_start_steps, int) or warm_start_steps < 0:
        raise ConfigError(f"warm_start_steps must be an integer >= 0, got {warm_start_steps!r}")
    configs = {m: method_config(base, m) for m in methods}        # a bad override: one line, before any run
    warm = {seed: warm_start_config(base, warm_start_steps, seed, out / WARM_START / f"seed-{seed}")
            for seed in seeds} if warm_start_steps else {}
    check_output_dir(out)
    train = train or (lambda trainer: trainer.train())
    for config in warm.values():
        _train_or_reuse(Path(config.out), config, train, on_run, WARM_START)
    for method in methods:
        for seed in seeds:
            path = run_dir(out, method, seed)
            start = {"model": str(Path(warm[seed].out) / f"checkpoint-{warm_start_steps}")} if warm else {}
            config = dataclasses.replace(configs[method], seed=seed, out=str(path), overwrite=True, **start)
            _train_or_reuse(path, config, train, on_run, method)
    return write_comparison(out, methods, seeds, warm_start_steps=warm_start_steps)


def _same_settings(path: Path, config: TrainConfig) -> None:
    """Refuse to reuse (skip or resume) a run in ``path`` that was made with other settings."""
    if not (path / "config.yaml").is_file():
        return
    from .config import from_dict, load_yaml

    earlier = from_dict(TrainConfig, load_yaml(path / "config.yaml"), str(path / "config.yaml"))
    differ = differing_fields(earlier, config, ignore=OPERATIONAL)
    if differ:
        raise ConfigError(f"compare: {path} holds a run made with other settings ({'; '.join(differ)}); "
                          "use another --out, or delete that run to train it again")


def pooled_summary(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """:func:`metrics.summarize` over eval samples of several seeds, clustered by problem id."""
    return metrics.summarize(
        rewards=np.array([[a["reward"] for a in r["attempts"]] for r in rows], dtype=float),
        texts=[[a["text"] for a in r["attempts"]] for r in rows],
        parsed=[[a["answer"] for a in r["attempts"]] for r in rows],
        truncated=np.array([[a["truncated"] for a in r["attempts"]] for r in rows], dtype=bool),
        lengths=np.array([[a["tokens"] for a in r["attempts"]] for r in rows], dtype=float),
        group_ids=[r["id"] for r in rows],
        formatted=None if any(a.get("formatted") is None for r in rows for a in r["attempts"]) else
        np.array([[a["formatted"] for a in r["attempts"]] for r in rows], dtype=bool),
        lenient=None if any(a.get("lenient") is None for r in rows for a in r["attempts"]) else
        np.array([[a["lenient"] for a in r["attempts"]] for r in rows], dtype=float),
        seed=seed,
    )


def _curves(path: Path) -> dict[int, dict[str, float]]:
    log = path / "metrics.jsonl"
    if not log.is_file():
        return {}
    out = {}
    for line in log.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["step"]] = {k: v for k, v in row.items() if k in ("reward_t1", "reward_t2")}
    return out


def _test_split(out: Path, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, Any] | None:
    """The test problems every run was evaluated on (from the runs' ``eval/metrics.json``), or None."""
    for method in methods:
        for seed in seeds:
            path = run_dir(out, method, seed) / "eval" / "metrics.json"
            if path.is_file():
                where = json.loads(path.read_text()).get("split")
                if where:
                    return where
    return None


def run_budget(out: Path, method: str, seeds: Sequence[int]) -> dict[str, Any]:
    """What one run of ``method`` spent: episodes sampled and optimizer steps (applied, per seed)."""
    from .config import from_dict, load_yaml

    first = run_dir(out, method, seeds[0]) / "config.yaml"
    config = from_dict(TrainConfig, load_yaml(first), str(first))
    applied = []
    for seed in seeds:
        extra = json.loads((run_dir(out, method, seed) / "eval" / "metrics.json").read_text())
        applied.append(int(extra.get("step", 0)) - int(extra.get("skipped_steps", 0)))
    return {"sampled_episodes": config.sampled_episodes, "scheduled_updates": config.total_steps,
            "applied_updates": applied}


def format_budget(methods: dict[str, Any]) -> str:
    """The budget rule made visible: every method samples the same episodes; updates differ by method."""
    lines = ["Budget: every trained method samples SCoRe's number of episodes (SFT datasets rounded up to whole "
             "problems); gradient updates differ (RL: one per sampled batch; SFT: `sft_steps` per dataset).", "",
             "| Method | Episodes sampled | Gradient updates (scheduled) | Applied per seed |",
             "|---|---|---|---|"]
    for name, entry in methods.items():
        b = entry["budget"]
        lines.append(f"| {name} | {b['sampled_episodes']} | {b['scheduled_updates']} | "
                     f"{', '.join(map(str, b['applied_updates']))} |")
    return "\n".join(lines)


def write_comparison(out: Path, methods: Sequence[str], seeds: Sequence[int],
                     warm_start_steps: int = 0) -> dict[str, Any]:
    """Pool each method's eval episodes over seeds and write table.md/json and the plots."""
    summaries: dict[str, dict[str, Any]] = {}
    table: dict[str, Any] = {"methods": {}, "seeds": list(seeds)}
    if warm_start_steps:
        table["warm_start"] = {"method": "single-turn", "steps": warm_start_steps, "runs": f"{WARM_START}/seed-S"}
    curves: dict[str, dict[str, list[float]]] = {}
    browsed: list[dict[str, Any]] = []                # every run's episodes for report.html, tagged by run
    for method in methods:
        rows, per_seed = [], []
        for seed in seeds:
            seed_rows = read_jsonl(run_dir(out, method, seed) / "eval" / "samples.jsonl")
            rows.extend(seed_rows)
            browsed.extend({**r, "group": f"{method} seed {seed}"} for r in seed_rows)
            r = np.array([[a["reward"] for a in x["attempts"]] for x in seed_rows], dtype=float)
            per_seed.append({"seed": seed, "accuracy": r.mean(0).tolist()})
        summary = pooled_summary(rows)
        summaries[method] = summary
        keys = ("n", "n_groups", "attempts", "accuracy", "delta", "delta_i2c", "delta_c2i",
                "edit_distance_ratio", "copy_rate", "parse_rate", "format_rate", "self_verification", "ci95",
                "ci_method")
        table["methods"][method] = {**{k: summary.get(k) for k in keys}, "per_seed": per_seed,
                                    "budget": run_budget(out, method, seeds)}
        steps: dict[int, list[dict[str, float]]] = {}
        for seed in seeds:
            for step, row in _curves(run_dir(out, method, seed)).items():
                steps.setdefault(step, []).append(row)
        if steps:
            xs = sorted(steps)
            curves[method] = {"step": xs, **{k: [float(np.mean([r[k] for r in steps[s] if k in r] or [np.nan]))
                                                 for s in xs] for k in ("reward_t1", "reward_t2")}}
    where = _test_split(out, methods, seeds)
    table["split"] = where
    write_json(out / "table.json", table)
    with atomic_write(out / "table.md") as fh:
        fh.write(f"# Comparison ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: "
                 f"{', '.join(map(str, seeds))}; greedy)\n\n"
                 + (f"Problems: {report.split_note(where, where.get('evaluated'))}, the same for every run; "
                    "each run evaluated once, at its end.\n\n" if where else "")
                 + (f"Every method starts from the same warm start of its seed ({warm_start_steps} steps of "
                    f"single-turn RL, `{WARM_START}/seed-S`), which is also its π_ref; the warm start's episodes "
                    "are not in the budget below.\n\n" if warm_start_steps else "")
                 + f"{report.format_table(summaries)}\n"
                 f"\n## Self-verification (attempt 1 → 2)\n\n{report.format_self_verification(summaries)}\n"
                 f"\n{format_budget(table['methods'])}\n")
    if all(s.get("edit_histogram") for s in summaries.values()):
        plots.plot_edit_histograms(summaries, out / "edit_ratio.png")
    if curves:
        plots.plot_method_curves(curves, out / "training_curves.png")
    plots.plot_delta_bars(summaries, out / "delta.png")
    from .html_report import write_report

    write_report(out / "report.html", f"Comparison: {', '.join(methods)}", summaries, browsed,
                 [out / name for name in ("delta.png", "edit_ratio.png", "training_curves.png")],
                 notes=[f"seeds {', '.join(map(str, seeds))}; each method's held-out episodes pooled over seeds",
                        format_budget(table["methods"]).splitlines()[0]])
    return table
