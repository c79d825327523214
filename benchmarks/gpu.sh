#!/usr/bin/env bash
# GPU check on a bare single-GPU CUDA machine (Python 3.12 with its own torch and timm; no
# deepspeed, decord, webdataset, zarr, numcodecs, simplejpeg or av; no network): needs nothing
# from this repository but salt/models and salt/masks (tests/test_gpu_scripts.py runs it with
# those packages hidden). The JSON is rewritten after every row, so a time limit keeps what
# finished; its duration since the compiled rows were added is not measured: give it a
# 10-minute limit, or `--only teacher --no-compile` for a short run.
#   bash benchmarks/gpu.sh            # numbers into $OUT/gpu.json (or benchmarks/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 python3 benchmarks/gpu_bench.py "$@"
