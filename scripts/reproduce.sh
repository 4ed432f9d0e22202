#!/usr/bin/env bash
# The reproduction of docs/reproduction.md, step by step, on the current code (2-core CPU: fp32 throughout,
# the arithmetic config's autocast none). Each step can be run alone; `compare` skips finished runs and resumes
# interrupted ones, so a step cut short is continued by running it again.
#
#   scripts/reproduce.sh demo        # SCoRe on arithmetic, base vs trained, with its wall time (~15 min)
#   scripts/reproduce.sh compare A,B # methods A,B at seeds 0,1,2 on the demo budget   (~13 min per run)
#   scripts/reproduce.sh table       # the pooled 3-seed table over the methods run so far
#   scripts/reproduce.sh curve M     # method M at 4x the demo budget, tested every 10 steps       (~50 min per run)
#   scripts/reproduce.sh curve-table # the budget curve of score and single-turn (scripts/budget_curve.py)
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
    # What `make demo` ran before it moved to the testbed (selfcorrect/configs/arithmetic.yaml).
    timed "$PY" -m selfcorrect.cli train --config arithmetic --compare-base --overwrite true --out "$RUNS/demo" \
        2>&1 | tee "$RUNS/demo.log" ;;
  compare)
    timed "$PY" -m selfcorrect.cli compare --config arithmetic --methods "${2:-$ALL}" --seeds "$SEEDS" \
        --out "$RUNS/compare" 2>&1 | tee -a "$RUNS/compare.log" ;;
  table)
    timed "$PY" -m selfcorrect.cli compare --config arithmetic --methods "${2:-$ALL}" --seeds "$SEEDS" \
        --out "$RUNS/compare" 2>&1 | tail -40 ;;
  curve)
    # Fresh runs of 4x the demo budget (8 iterations, 40 steps), tested every 10 steps (test-evals/step-N)
    # and checkpointed at 10, 20, 30, 40, every checkpoint kept (transfer needs checkpoint-10).  Neither the
    # schedule so far nor the data order depends on the iteration count, and test evaluations leave training
    # alone (tests/test_splits.py), so step 10 of seed S is the compare run of seed S.  A run interrupted
    # after a checkpoint is resumed; one killed before its first checkpoint starts again.
    for seed in ${SEEDS//,/ }; do
      run="$RUNS/curve/${2:?method}/seed-$seed"
      if [ -f "$run/eval/metrics.json" ]; then continue; fi
      if compgen -G "$run/checkpoint-*" >/dev/null; then
        timed "$PY" -m selfcorrect.cli train --resume "$run" 2>&1 | tee -a "$RUNS/curve-$2.log"
      else
        timed "$PY" -m selfcorrect.cli train --config arithmetic --method "$2" --seed "$seed" --iterations 8 \
            --test-every 10 --save-every 10 --keep-last 100 --overwrite true --out "$run" 2>&1 \
            | tee -a "$RUNS/curve-$2.log"
      fi
    done ;;
  curve-table)
    timed "$PY" scripts/budget_curve.py "$RUNS/curve" --methods score,single-turn --seeds "$SEEDS" \
        --base "${BASE:-docs/results/repro/demo/eval-base}" --out "$RUNS/curve" ;;
  transfer)
    # Each run's demo-budget checkpoint on the word-phrased test problems, into $RUNS/transfer/M/seed-S/eval:
    # a compare run's final checkpoint, else (score, single-turn) its curve run's checkpoint-10, which is
    # the same state.  Then the untrained model, and the table (scripts/transfer.py).
    words() { dest=$1; shift; [ -f "$dest/metrics.json" ] && return 0
      timed "$PY" -m selfcorrect.cli eval "$@" -o phrasing=words --limit 200 --max-new-tokens 32 \
          --dtype float32 --out "$dest" 2>&1 | tail -2; }
    words "$RUNS/transfer/base/seed-0/eval" --model default
    for run in "$RUNS"/compare/*/seed-* "$RUNS"/curve/*/seed-*; do
      case "$run" in
        */curve/*) ckpt="$run/checkpoint-10" ;;
        *) [ -f "$run/eval/metrics.json" ] || continue        # finished runs only: their final checkpoint
           ckpt="$run/checkpoint-$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' \
                 "$run/eval/metrics.json")" ;;
      esac
      [ -d "$ckpt" ] || continue
      method=$(basename "$(dirname "$run")"); seed=${run##*seed-}
      words "$RUNS/transfer/$method/seed-$seed/eval" --model "$ckpt"
    done
    # and the curve runs at 4x the budget (their final checkpoint-40), beside their own step-40 digit test
    for run in "$RUNS"/curve/*/seed-*; do
      [ -d "$run/checkpoint-40" ] || continue
      words "$RUNS/transfer-40/$(basename "$(dirname "$run")")/${run##*/}/eval" --model "$run/checkpoint-40"
    done
    "$PY" scripts/transfer.py "$RUNS/transfer" --digits "$RUNS/compare" --seeds "$SEEDS" --out "$RUNS/transfer-tables"
    if [ -d "$RUNS/transfer-40" ]; then
      "$PY" scripts/transfer.py "$RUNS/transfer-40" --digits "$RUNS/curve" --seeds "$SEEDS" --out "$RUNS/transfer-40"
    fi ;;
  *) sed -n 2,13p "$0"; exit 2 ;;
esac
