#!/usr/bin/env bash
# GPU check (see benchmarks/gpu_check.py) on one CUDA GPU, nothing downloaded:
#   bash benchmarks/gpu_check.sh [--json out.json]   # ViT-B/16 images/s and MFU (bf16, TF32
#       extraction, training), MultiFCL rounds over 10 clients, 2 tasks: 1-2 minutes on an H200
#   bash benchmarks/gpu_check.sh --paper             # the CIFAR-100 10-task MultiFCL preset
#       end to end through the server loop: wall time and seconds per round vs the paper
#   bash benchmarks/gpu_check.sh --dry-run [--paper] # the same code on the CPU, in seconds
# Needs python3 with torch (CUDA), transformers, peft and numpy; --paper the project's
# requirements (flwr). PYTHON=/path/to/python picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
modules="torch, transformers, peft, numpy"
limit=470  # seconds; the paper preset gets more
for argument in "$@"; do
    if [ "$argument" = "--paper" ]; then modules="$modules, flwr"; limit=590; fi
done
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PYTHON" -c "import $modules" || {
    echo "gpu_check: $PYTHON lacks one of $modules" >&2
    exit 2
}
exec timeout --signal=INT "$limit" "$PYTHON" benchmarks/gpu_check.py "$@"
