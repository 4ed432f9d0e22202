#!/usr/bin/env bash
# GPU check: the CUDA tests and a short SCoRe run on one GPU, in under 8 minutes.
#
# Needs no network and downloads no model: the tests use a tiny random model and
# the run uses the default model's architecture with random weights (both with
# the default tokenizer, which `make setup` installs).  Prints step time,
# generated tokens/s and peak GPU memory.  Logs go to $LOG_DIR (default
# runs/gpu_check).
#
#     bash scripts/gpu_check.sh            # after `make setup` on a CUDA machine
#     PYTHON=python3 bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LOG_DIR=${LOG_DIR:-runs/gpu_check}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" - <<'PY'
import sys, torch, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")
print(f"cuda device: {torch.cuda.get_device_name()} (bf16: {torch.cuda.is_bf16_supported()})")
PY

echo "== GPU-marked tests"
timeout 240 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$LOG_DIR/tests.log"

echo "== SCoRe run: SmolLM2-135M architecture, random weights, full fine-tuning"
timeout 150 "$PYTHON" benchmarks/gpu_run.py --arch default --steps 4 --problems 16 --samples 4 \
    --max-new-tokens 128 --json "$LOG_DIR/run_full.json" 2>&1 | tee "$LOG_DIR/run_full.log"

echo "== SCoRe run: same, LoRA r=16"
timeout 150 "$PYTHON" benchmarks/gpu_run.py --arch default --steps 4 --problems 16 --samples 4 \
    --max-new-tokens 128 --lora-r 16 --json "$LOG_DIR/run_lora.json" 2>&1 | tee "$LOG_DIR/run_lora.log"
echo "gpu_check: done"
