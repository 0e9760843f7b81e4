#!/usr/bin/env bash
# One prepared GPU run (about 15 minutes, start-up included): how many EfficientAD-S steps does
# the demo tile need to reach image AUROC 0.9, and what does EfficientAD cost on a GPU?
#   1. benchmarks/bench_efficientad.py --device cuda: seconds per step and inference ms, GPU alone;
#   2. EfficientAD-S on the demo tile with the committed teacher, several step caps at once (each its
#      own run: anomalib's learning-rate drop follows the step cap), each evaluated on the test set
#      (image/pixel AUROC, AUPRO, GPU ms/image); meanwhile the suite's CUDA tests run.
# The answer sizes the CPU queue's share for tile (core/autotrain.py): a CPU
# step costs about 1.36 s, so N steps need N x 1.36 s of the out-of-box hour.
#
#   bash benchmarks/gpu_efficientad_steps.sh OUTDIR
#
# Environment: STEP_CAPS (default "700 1400 2800 5600"), CAP_S (time budget per run, default 330),
# CATEGORY (default tile), DEVICE (default cuda), PYTHON (default python3).
set -u
OUT=${1:?usage: gpu_efficientad_steps.sh OUTDIR}
CAPS=${STEP_CAPS:-700 1400 2800 5600}
CAP_S=${CAP_S:-330}
CAT=${CATEGORY:-tile}
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"

export INSPECT_HOME=/tmp/ih_demo
$PY -m core demo-data --categories "$CAT" > /tmp/demo.log 2>&1 || { tail -5 /tmp/demo.log; exit 1; }
export INSPECT_DATA_ROOT=/tmp/ih_demo/demo_data
stamp "demo data in $INSPECT_DATA_ROOT"

stamp "step cost on $DEV (alone on the GPU)"
timeout 120 $PY benchmarks/bench_efficientad.py --device "$DEV" --rounds 30 --images 30 \
  --variants "anomalib fp32" "bf16" "bf16+cl+fused+cache" "fp32+fused+cache" 2>&1 | grep -v -i warn | tail -14

stamp "EfficientAD-S $CAT, step caps: $CAPS (each capped at ${CAP_S} s)"
PIDS=()
for n in $CAPS; do
  (export INSPECT_HOME=/tmp/ih_ead_$n &&
    $PY -m core train --model efficientad --category "$CAT" --device "$DEV" --steps "$n" \
      --time-budget "${CAP_S}s" > /tmp/ead_$n.log 2>&1 &&
    $PY -m core evaluate --model efficientad --category "$CAT" --device "$DEV" >> /tmp/ead_$n.log 2>&1
    echo "exit $?" >> /tmp/ead_$n.log) &
  PIDS+=($!)
done

stamp "CUDA tests (CPU side, beside the training)"
timeout 240 $PY -m pytest tests/test_coreset.py tests/test_teacher.py -q -p no:cacheprovider \
  -k "not committed" 2>&1 | tail -3

for p in "${PIDS[@]}"; do wait "$p"; done
for n in $CAPS; do
  echo "== cap $n steps"
  grep -a -o "trained efficientad[^|]*" /tmp/ead_$n.log | tail -1 | cut -c1-400
  grep -a -E "^(model/category|efficientad/)|exit " /tmp/ead_$n.log | tail -3
  R=$(find /tmp/ih_ead_$n -name results.json 2>/dev/null | head -1)
  [ -n "$R" ] && cp "$R" "$OUT/results_$n.json"
done
for n in $CAPS; do  # one file for all runs' metadata (steps, time, validation curve): 8 files come back at most
  M=$(find /tmp/ih_ead_$n -name meta.json 2>/dev/null | head -1)
  [ -n "$M" ] && { tr -d '\n' < "$M"; echo; } >> "$OUT/meta_all.jsonl"
done
stamp "done"
