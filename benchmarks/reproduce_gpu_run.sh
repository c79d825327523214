#!/usr/bin/env bash
# One device call of the lent-GPU session: run (or resume) the chain for at most LIMIT seconds,
# then copy what it made to $OUT (claims table, probe results, logs, every run's metrics).
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reproduce_gpu_out}; mkdir -p "$OUT"
timeout "${LIMIT:-500}" bash benchmarks/reproduce_gpu.sh > "$OUT/run.log" 2>&1; rc=$?
R=runs/reproduce_gpu
cp -r $R/claims.md $R/claims.json $R/probes $R/done "$OUT/" 2>/dev/null
for d in $R/*/; do
  [ -f "$d/metrics.jsonl" ] || continue
  mkdir -p "$OUT/metrics/$(basename "$d")" && cp "$d/metrics.jsonl" "$OUT/metrics/$(basename "$d")/"
done
mkdir -p "$OUT/logs" && for f in $R/logs/*.log; do tr '\r' '\n' < "$f" | grep -v "it/s\]$\|s/it\]$" | tail -40 > "$OUT/logs/$(basename "$f")"; done
tail -40 "$OUT/run.log"; exit $rc
