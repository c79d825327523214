#!/usr/bin/env bash
# GPU check on a bare single-GPU CUDA machine (Python 3.12 with its own torch and timm; no
# deepspeed, decord, webdataset, zarr, numcodecs or av; no network). Needs nothing else from
# this repository than salt/models and salt/masks. About 3-5 minutes on an H100/H200.
#   bash benchmarks/gpu.sh            # numbers into $OUT/gpu.json (or benchmarks/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 python3 benchmarks/gpu_bench.py "$@"
