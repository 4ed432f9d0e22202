"""The correction-signal probe over a grid of settings, and its table.

    python scripts/probe_sweep.py GRID [--runs runs/probe-sweep] [--table docs/results/probe] [--only NAME,...]
    python scripts/probe_sweep.py --list

Every setting is the demo's training config (``selfcorrect/configs/arithmetic.yaml``: T = 0.7, 4 samples per
problem, 2 attempts) with a few fields changed, probed on 64 training problems (``selfcorrect probe``).
Each setting's probe goes to ``RUNS/GRID/NAME/`` (skipped when its probe.json exists, so a killed sweep
resumes); the table of all of them to ``TABLE/GRID.md`` and ``TABLE/GRID.json`` (the per-setting
probe.json files are copied beside it: small summaries, no samples).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

SMOL = {"model": "default"}
GEMMA = {"model": "gemma3-270m", "chat_template": "plain"}


def _strings(op: str, **options) -> dict:
    return {"task": "strings", "task_options": {"operation": op, **options}, "max_new_tokens": 32}


def _arith(**options) -> dict:
    return {"task": "arithmetic", "task_options": dict(options)}


def _first() -> dict[str, dict]:
    """The default setting and each new task at its defaults, both models (issue: the first probe table)."""
    tasks = {"arithmetic": _arith(), "arithmetic-nocarry": _arith(carry="none"),
             **{f"strings-{op}": _strings(op) for op in ("copy", "reverse", "sort", "count")}}
    return {f"{model}/{name}": {**spec, **setting} for model, spec in (("smollm2", SMOL), ("gemma3", GEMMA))
            for name, setting in tasks.items()}


def _search() -> dict[str, dict]:
    """Candidates for a learnable correction signal on the default model: a solved example (answer form),
    the `redo` correction turn (solve again instead of rewrite), spaced sources, lengths, operations."""
    grid: dict[str, dict] = {}
    for name, op, options in (
            ("copy-5-1shot", "copy", {}), ("copy-5-1shot-redo", "copy", {"correction": "redo"}),
            ("copy-5-spaced-1shot-redo", "copy", {"correction": "redo", "phrasing": "spaced"}),
            ("copy-8-1shot-redo", "copy", {"length": 8, "correction": "redo"}),
            ("reverse-3-1shot-redo", "reverse", {"length": 3, "correction": "redo"}),
            ("sort-3-1shot-redo", "sort", {"length": 3, "correction": "redo"}),
            ("count-5-1shot-redo", "count", {"correction": "redo"})):
        grid[f"smollm2/{name}"] = {**SMOL, **_strings(op, shots=1, **options)}
    grid["smollm2/arithmetic-1shot"] = {**SMOL, **_arith(shots=1)}
    return grid


def _temperature() -> dict[str, dict]:
    """Temperature for the settings the search kept (edited by hand as the search goes)."""
    grid = {}
    for t in (0.4, 1.0):
        grid[f"smollm2/copy-5-spaced-1shot-T{t}"] = {**SMOL, **_strings("copy", length=5, phrasing="spaced", shots=1),
                                                     "temperature": t}
    return grid


GRIDS = {"first": _first, "search": _search, "temperature": _temperature}


def _cell(rate, digits=1) -> str:
    if not rate or rate.get("value") is None:
        return "–"
    ci = rate.get("ci95")
    return f"{rate['value']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _pct(rate):
    if not rate or rate.get("value") is None:
        return None
    return {"value": 100 * rate["value"], "ci95": [100 * c for c in rate["ci95"]] if rate.get("ci95") else None}


def table(rows: dict[str, dict]) -> str:
    head = ("| Setting | Acc@t1 | Acc@t1 lenient | Answer corr. /100 | Form repairs /100 | Breaks /100 | "
            "P(right \\| changed wrong) | Re-sample right | AUROC (agreement) | Keep-or-re-answer Δ ceiling | "
            "Oracle ceiling | Groups w/ variance t1/t2 | Verdict | s |")
    lines = [head, "|" + "---|" * 14]
    for name, r in rows.items():
        sc, an = r["self_consistency"], r["anchoring"]
        auc = "–" if sc["auroc"] is None else f"{sc['auroc']:.2f}"
        lenient = _cell(r["accuracy_lenient"]["t1"]) if r.get("accuracy_lenient") else "–"
        lines.append(
            f"| {name} | {_cell(r['accuracy']['t1'])} | {lenient} | {_cell(r['per_100']['answer_corrections'])} | "
            f"{_cell(r['per_100']['form_repairs'])} | {_cell(r['per_100']['breaks'])} | "
            f"{_cell(_pct(an['changed_wrong_right']), 0)} (n={an['changed_wrong_right']['n']}) | "
            f"{_cell(_pct(an['resample_right_same_episodes']), 0)} | {auc} | {_cell(sc['policy_delta'])} | "
            f"{_cell(sc['oracle_delta'])} | {100 * r['rloo_variance']['t1']:.0f}% / {100 * r['rloo_variance']['t2']:.0f}% | "
            f"{'signal' if r['verdict']['signal'] else 'none'} | {r.get('seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", choices=sorted(GRIDS))
    parser.add_argument("--runs", type=Path, default=Path("runs/probe-sweep"))
    parser.add_argument("--table", type=Path, default=Path("docs/results/probe"))
    parser.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list or not args.grid:
        for name, grid in GRIDS.items():
            print(f"{name}: {', '.join(grid())}")
        return 0

    from selfcorrect.config import build_config
    from selfcorrect.errors import SelfCorrectError
    from selfcorrect.probe import ProbeConfig, run_probe

    grid = GRIDS[args.grid]()
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if n not in grid]
    if unknown:
        print(f"probe_sweep: unknown setting(s) {', '.join(unknown)} in grid {args.grid}", file=sys.stderr)
        return 2
    rows = {}
    for name, overrides in grid.items():
        out = args.runs / args.grid / name
        if not only or name in only:
            if not (out / "probe.json").is_file():
                started = time.perf_counter()
                config = build_config(ProbeConfig, {**overrides, "out": str(out), "probe_problems": args.problems},
                                      "demo")
                try:
                    run_probe(config)
                except SelfCorrectError as err:
                    print(f"{name}: error: {err}", file=sys.stderr)
                    continue
                print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        if (out / "probe.json").is_file():
            rows[name] = json.loads((out / "probe.json").read_text())
            print(f"{name}: {rows[name]['verdict']['line']}", flush=True)
    args.table.mkdir(parents=True, exist_ok=True)
    for name in rows:
        target = args.table / args.grid / name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.runs / args.grid / name / "probe.json", target / "probe.json")
    text = (f"# Probe sweep `{args.grid}`\n\nCommand: `python scripts/probe_sweep.py {args.grid}` "
            f"({args.problems} training problems x 4 samples x 2 attempts per setting, the demo config otherwise: "
            "T = 0.7, strict reward; CIs: cluster bootstrap over problems). Rates per 100 episodes; "
            "P(right | changed wrong) and re-sample in %; ceilings in accuracy points.\n\n" + table(rows))
    missing = [name for name in grid if name not in rows]
    if missing:
        text += f"\nNot run yet: {', '.join(missing)}.\n"
    (args.table / f"{args.grid}.md").write_text(text)
    (args.table / f"{args.grid}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
