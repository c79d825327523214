#!/usr/bin/env bash
# GPU evidence in one call (issue 36): process 1 end to end, the student under DeepSpeed, the
# teacher forward, on one bare GPU machine (Python 3.12 with its own torch; no network) within
# a 9-minute budget, the install of the carried wheels included. Build what it carries first,
# where a package index and PyAV are: `make gpu-wheels` (gpu-carry/: wheels + clips, ~59 MiB).
#   bash benchmarks/gpu_evidence.sh            # $OUT/gpu-evidence.json, -logs.tar.gz, .txt
#   bash benchmarks/gpu_evidence.sh --smoke    # the same sections on the CPU at tiny sizes
# On the lent machine: run(command="bash benchmarks/gpu_evidence.sh", carry=["gpu-carry"], timeout_s=600).
# Sections, caps and every JSON field: benchmarks/gpu_evidence.py and docs/results.md, "GPU evidence".
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: no GPU here"
exec "${PYTHON:-python3}" -u benchmarks/gpu_evidence.py --started "$started" "$@"
