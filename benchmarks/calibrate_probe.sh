#!/usr/bin/env bash
# Probe-benchmark calibration (issue 8, step 0): the random-init floor over 3 seeds vs. a
# supervised ceiling (same encoder size, same probe). Everything is set by environment:
#   DATA (default data/synthetic), OUT (runs/calibration), FRAMES/SIZE (clip geometry, 16/64),
#   STEPS/BATCH/LR (supervised run, 1500/16/1e-3), HEAD_DEPTH (self-attention blocks in the
#   probe and the supervised head, 1), PROBE_CONFIG (configs/probe/demo.yaml).
#   DATA=data/synthetic_1k OUT=runs/calibration_1k bash benchmarks/calibrate_probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${DATA:-data/synthetic}
OUT=${OUT:-runs/calibration}
FRAMES=${FRAMES:-16}
SIZE=${SIZE:-64}
STEPS=${STEPS:-1500}
BATCH=${BATCH:-16}
LR=${LR:-1.0e-3}
HEAD_DEPTH=${HEAD_DEPTH:-1}
PROBE="$BIN/salt probe --train $DATA/train.csv --val $DATA/val.csv --config ${PROBE_CONFIG:-configs/probe/demo.yaml} --set head_depth=$HEAD_DEPTH"
mkdir -p $OUT
for seed in 0 1 2; do
  [ -f $OUT/random_seed$seed.json ] || $PROBE --random-init vit_tiny --arch img_size=$SIZE --arch num_frames=$FRAMES \
      --set seed=$seed --out $OUT/random_seed$seed.json
done
[ -f $OUT/supervised/supervised.pt ] || $BIN/salt train-teacher --config configs/teacher/vit_tiny.yaml \
    --set objective=supervised --set encoder.arch=vit_tiny --set supervised.head_depth=$HEAD_DEPTH --set data.train=$DATA/train.csv \
    --set data.view.frames=$FRAMES --set data.view.size=$SIZE --set data.batch_size=$BATCH \
    --set optim.steps=$STEPS --set optim.warmup_steps=$((STEPS / 15)) --set optim.lr_peak=$LR \
    --set optim.wd_start=0.01 --set optim.wd_final=0.01 --set run.out_dir=$OUT/supervised --set run.checkpoint_every=500 \
    $( [ -f $OUT/supervised/config.yaml ] && echo --resume )
[ -f $OUT/supervised.json ] || $PROBE --encoder $OUT/supervised/supervised.pt --out $OUT/supervised.json
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
floor = [json.loads((out / f"random_seed{s}.json").read_text())["best"]["top1"] for s in range(3)]
ceiling = json.loads((out / "supervised.json").read_text())["best"]["top1"]
train = [json.loads(l) for l in (out / "supervised" / "metrics.jsonl").read_text().splitlines()][-1]
print(f"random-init floor (3 seeds): {', '.join(f'{f:.1%}' for f in floor)}; mean {sum(floor) / 3:.1%}")
print(f"supervised ceiling: probe {ceiling:.1%}; its own training accuracy at the end {train['accuracy']:.1%} (step {train['step']})")
print(f"gap: {ceiling - sum(floor) / 3:+.1%} (the benchmark can judge SSL only if this is >= 20 points)")
PY
