#!/usr/bin/env bash
# The feedback-loop bench (benchmarks/bench_feedback_loop.py) over coreset ratios and training seeds.
#
# Why: the bench scores 20 drifted goods and 30 original defects, so one image moves a rate by
# 5 or 3.3 points; a single training (one calibration draw) cannot tell a setting's effect from
# that noise. Each (ratio, seed) gets its own workspace under OUT: PatchCore trained on the demo
# categories (and real bottle minus its confirmation pool when --bottle is given), then the bench.
#
#   bash benchmarks/bench_feedback_sweep.sh OUT [--ratios "0.025 0.05 0.1"] [--seeds "0 1 2"] [--draws K] [--bottle]
#        [--bench "more bench_feedback_loop.py options"] [--log NAME]
#
# Each workspace's table is in OUT/r<ratio>_s<seed>/<NAME> (default bench.log); models already there
# are reused. --bench passes e.g. the larger demo sets: "--pool 100 --drift-goods 200 ...".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench_feedback_sweep.sh OUT [--ratios "..."] [--seeds "..."] [--draws K] [--bottle]}
shift
RATIOS="0.025 0.05 0.1"
SEEDS="0 1 2"
CATS="tile leather grid"
DRAWS=1
BENCH=""
LOG=bench.log
while [ $# -gt 0 ]; do
  case "$1" in
    --ratios) RATIOS=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    --draws) DRAWS=$2; shift 2 ;;
    --bottle) CATS="$CATS bottle"; shift ;;
    --bench) BENCH=$2; shift 2 ;;
    --log) LOG=$2; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
if [ ! -d "$OUT/data/demo_data" ]; then  # one copy of the (seeded, deterministic) demo and drifted sets
  INSPECT_HOME="$OUT/data" "$PY" -m core demo-data --categories tile leather grid --drift
fi
for seed in $SEEDS; do
  for r in $RATIOS; do
    ws="$OUT/r${r}_s${seed}"
    mkdir -p "$ws"
    for d in demo_data demo_data_drift; do [ -e "$ws/$d" ] || cp -r "$OUT/data/$d" "$ws/$d"; done
    for c in tile leather grid; do
      [ -d "$ws/models/patchcore/$c" ] && continue
      INSPECT_HOME="$ws" "$PY" -m core train --model patchcore --category "$c" --data-root "$ws/demo_data" \
        --coreset-ratio "$r" --seed "$seed" > "$ws/train_$c.log" 2>&1
    done
    INSPECT_HOME="$ws" "$PY" benchmarks/bench_feedback_loop.py --categories $CATS --explain \
      --coreset-ratio "$r" --seed "$seed" --draws "$DRAWS" $BENCH > "$ws/$LOG" 2>&1
    echo "ratio $r seed $seed:"
    grep -E '^\| (tile|leather|grid|bottle) .*\| (before|update-bank)[ ,]' "$ws/$LOG"
  done
done
