#!/usr/bin/env bash
# `salt reproduce` on a bare single-GPU machine: Python 3.12 with its own torch and timm, no
# network. Installs the wheels carried in wheels/ (`make gpu-wheels` fetches them on a machine
# with a package index), then runs the chain; a second call resumes where the first stopped.
#   bash benchmarks/reproduce_gpu.sh [--set KEY=VALUE ...]     # results: runs/reproduce_gpu/
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m pip install --quiet --no-index --find-links "${WHEELS:-wheels}" deepspeed decord zarr numcodecs simplejpeg 2>&1 | tail -5
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -m salt.cli reproduce --config "${CONFIG:-configs/reproduce/gpu.yaml}" "$@"
