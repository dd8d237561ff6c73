#!/usr/bin/env bash
# GPU check (see benchmarks/gpu_check.py): ViT-B/16 fp32/bf16 throughput and MultiFCL round
# times over 10 clients, 2 tasks, on one CUDA GPU, in under 6 minutes (8 at the very most).
# Needs python3 with torch (CUDA), transformers, peft and numpy; nothing is downloaded.
#   bash benchmarks/gpu_check.sh [--json results.json] [gpu_check.py options]
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh --smoke   # tiny CPU run
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PYTHON" -c "import torch, transformers, peft, numpy" || {
    echo "gpu_check: $PYTHON lacks torch, transformers, peft or numpy" >&2
    exit 2
}
exec timeout --signal=INT 470 "$PYTHON" benchmarks/gpu_check.py "$@"
