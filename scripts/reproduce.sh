#!/usr/bin/env bash
# The reproduction of docs/reproduction.md, step by step, on the current code (2-core CPU: fp32 throughout,
# the demo config's autocast none). Each step can be run alone; `compare` skips finished runs and resumes
# interrupted ones, so a step cut short is continued by running it again.
#
#   scripts/reproduce.sh demo        # make demo's run, with its wall time            (~15 min)
#   scripts/reproduce.sh compare A,B # methods A,B at seeds 0,1,2 on the demo budget   (~13 min per run)
#   scripts/reproduce.sh table       # the pooled 3-seed table over the methods run so far
#   scripts/reproduce.sh curve M     # method M's runs extended to 4x the demo budget, tested every 5 steps
#   scripts/reproduce.sh transfer    # every trained run on the word-phrased test problems (strict reader)
#
# Outputs under runs/repro/ (RUNS=...); the committed copies are under docs/results/repro/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/repro}
SEEDS=${SEEDS:-0,1,2}
ALL=score,stage2-only,no-shaping,single-turn,star,pair-sft,star-stage2,prompting
mkdir -p "$RUNS"

timed() { /usr/bin/time -f "wall %e s" "$@"; }

case "${1:-}" in
  demo)
    timed "$PY" -m selfcorrect.cli demo --out "$RUNS/demo" 2>&1 | tee "$RUNS/demo.log" ;;
  compare)
    timed "$PY" -m selfcorrect.cli compare --config demo --methods "${2:-$ALL}" --seeds "$SEEDS" \
        --out "$RUNS/compare" 2>&1 | tee -a "$RUNS/compare.log" ;;
  table)
    timed "$PY" -m selfcorrect.cli compare --config demo --methods "${2:-$ALL}" --seeds "$SEEDS" \
        --out "$RUNS/compare" 2>&1 | tail -40 ;;
  curve)
    # iterations may grow on --resume (the schedule so far is kept): 2 -> 8 iterations = 4x the budget.
    for seed in ${SEEDS//,/ }; do
      timed "$PY" -m selfcorrect.cli train --resume "$RUNS/compare/${2:?method}/seed-$seed" \
          --iterations 8 --test-every 5 2>&1 | tee -a "$RUNS/curve-$2.log"
    done ;;
  transfer)
    for run in "$RUNS"/compare/*/seed-*; do
      ckpt=$(ls -d "$run"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1)
      [ -n "$ckpt" ] || continue
      timed "$PY" -m selfcorrect.cli eval --model "$ckpt" -o phrasing=words --limit 200 --max-new-tokens 32 \
          --dtype float32 --out "$run/eval-words" 2>&1 | tail -3
    done ;;
  *) sed -n 2,13p "$0"; exit 2 ;;
esac
