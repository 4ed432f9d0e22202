#!/usr/bin/env bash
# GPU check: the CUDA tests, a decode benchmark and short SCoRe runs on one GPU, in under 10 minutes.
#
# Needs no network and downloads no model: the tests use a tiny random model and
# the runs use the default model's architecture with random weights (both with
# the default tokenizer, which `make setup` installs).  Prints step time,
# generated tokens/s and peak GPU memory for full fine-tuning, LoRA, and the
# ZeRO-3 layout on FSDP2 and (when DeepSpeed is installed) on DeepSpeed's engine.  Logs go to $LOG_DIR (default runs/gpu_check).
# Every stage runs even if an earlier one failed; the exit status says whether all passed.
#
#     bash scripts/gpu_check.sh            # after `make setup` on a CUDA machine
#     PYTHON=python3 bash scripts/gpu_check.sh
#     STAGES="tests run_zero3" bash scripts/gpu_check.sh      # only these stages
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LOG_DIR=${LOG_DIR:-runs/gpu_check}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
failed=()
STAGES=${STAGES:-}
stage() {   # stage NAME SECONDS COMMAND...: run with a time limit, log to $LOG_DIR/NAME.log
    local name=$1 limit=$2; shift 2
    if [[ -n $STAGES && " $STAGES " != *" $name "* ]]; then return; fi
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log" || failed+=("$name")
}
RUN=(benchmarks/gpu_run.py --arch default --problems 16 --samples 4 --max-new-tokens 128)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
stage environment 60 "$PYTHON" - <<'PY'
import sys, torch, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")
print(f"cuda device: {torch.cuda.get_device_name()} (bf16: {torch.cuda.is_bf16_supported()})")
PY
stage tests 200 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests
# ms per decode step at batch 64, each decode mode vs model.generate (target: <= 3 ms)
stage decode 150 "$PYTHON" benchmarks/decode.py --device cuda --batch 64 --steps 64 --prompt-tokens 150
stage run_full 120 "$PYTHON" "${RUN[@]}" --steps 4 --json "$LOG_DIR/run_full.json"
# the CUDA-graph decode path (opt-in until this stage has passed on a GPU): generation's share of a step
stage run_graphs 150 "$PYTHON" "${RUN[@]}" --steps 4 --decode graphs --json "$LOG_DIR/run_graphs.json"
stage run_lora 120 "$PYTHON" "${RUN[@]}" --steps 3 --lora-r 16 --json "$LOG_DIR/run_lora.json"
stage run_zero3 120 "$PYTHON" -m torch.distributed.run --nproc_per_node 1 --master_port 29531 \
    "${RUN[@]}" --steps 3 --sharding zero3 --json "$LOG_DIR/run_zero3.json"
if "$PYTHON" -c "import deepspeed" >/dev/null 2>&1; then
    stage run_deepspeed_zero3 150 "$PYTHON" -m torch.distributed.run --nproc_per_node 1 --master_port 29532 \
        "${RUN[@]}" --steps 3 --sharding zero3 --sharding-engine deepspeed --json "$LOG_DIR/run_deepspeed_zero3.json"
else
    echo "== run_deepspeed_zero3: skipped (DeepSpeed is not installed: pip install 'selfcorrect[deepspeed]')"
fi

if ((${#failed[@]})); then echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
echo "gpu_check: all stages passed"
