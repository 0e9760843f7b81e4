#!/usr/bin/env bash
# One prepared run on a GPU machine (about 15 minutes): everything that needs the GPU, in one
# command, so the time is spent on work and not on start-ups. Stages, in order of value:
#   1. distil two EfficientAD teachers at once (the paper's lr/batch and a larger lr/batch), each
#      under a time budget, while the CPU side runs the suite's CUDA tests and trains + evaluates
#      PatchCore on bottle on the GPU (GPU latency);
#   2. probe the committed teacher and both new ones (benchmarks/probe_teacher.py, kNN AUROC on the
#      teacher's own features) on bottle and the demo categories;
#   3. train EfficientAD-S on bottle with the committed teacher and with the best new one, the
#      same number of steps, and evaluate both (image/pixel AUROC, AUPRO, GPU latency).
# Everything worth keeping lands in OUTDIR (at most 8 files: the device tool's limit).
#
#   bash benchmarks/gpu_run.sh OUTDIR DATA_ROOT        # DATA_ROOT holds bottle/ in the MVTec layout
#
# Environment: TEACHER_BUDGET (s, default 240), EAD_STEPS (default 3000), PROBE_CATS, DEVICE (default cuda),
# PYTHON (default python3).
set -u
OUT=${1:?usage: gpu_run.sh OUTDIR DATA_ROOT}
DATA=$(cd "${2:?usage: gpu_run.sh OUTDIR DATA_ROOT}" && pwd)
BUDGET=${TEACHER_BUDGET:-240}
EAD_STEPS=${EAD_STEPS:-3000}
PROBE_CATS=${PROBE_CATS-bottle tile leather grid}
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
ROOT=$(pwd)
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"

# Later runs on the same machine can skip what an earlier one already brought back: SKIP_DISTILL=1 skips
# stage 1, PROBE_CATS="" skips stage 2, NEW_TEACHER=file picks the teacher for stage 3.
SKIP_DISTILL=${SKIP_DISTILL:-0}
NEW_TEACHER=${NEW_TEACHER:-}

# Demo data once, shared read-only by every stage below.
export INSPECT_HOME=/tmp/ih_demo
[ -z "$PROBE_CATS" ] || $PY -m core demo-data > /tmp/demo.log 2>&1 || { cat /tmp/demo.log; exit 1; }
DEMO=/tmp/ih_demo/demo_data
[ -d "$DEMO/tile" ] || DEMO=$(dirname "$(find /tmp/ih_demo -maxdepth 3 -type d -name tile | head -1)")
stamp "demo data in $DEMO"

# ---- stage 1: two distillations (each its own workspace: the texture cache is per workspace) ------
if [ "$SKIP_DISTILL" != 1 ]; then
stamp "distilling two teachers, ${BUDGET} s each"
INSPECT_HOME=/tmp/ih_a $PY -m core distill-teacher --device "$DEV" --time-budget "$BUDGET" \
  --batch-size 16 --lr 1e-4 --out "$OUT/teacher_a" > /tmp/teacher_a.log 2>&1 &
PID_A=$!
INSPECT_HOME=/tmp/ih_b $PY -m core distill-teacher --device "$DEV" --time-budget "$BUDGET" \
  --batch-size 32 --lr 5e-4 --out "$OUT/teacher_b" > /tmp/teacher_b.log 2>&1 &
PID_B=$!

stamp "CUDA tests"
timeout 200 $PY -m pytest tests/test_coreset.py tests/test_teacher.py -q -p no:cacheprovider \
  -k "not committed" 2>&1 | tail -5

stamp "PatchCore bottle on the GPU: train + evaluate"
export INSPECT_HOME=/tmp/ih_pc
$PY -m core train --model patchcore --category bottle --data-root "$DATA" --device "$DEV" 2>&1 | tail -1
INSPECT_DATA_ROOT="$DATA" $PY -m core evaluate --model patchcore --category bottle --device "$DEV" 2>&1 | tail -6

wait $PID_A; echo "teacher a exit $?"; tail -c 600 /tmp/teacher_a.log; echo
wait $PID_B; echo "teacher b exit $?"; tail -c 600 /tmp/teacher_b.log; echo
fi

# ---- stage 2: probe (all probes at once: each is small, the machine has cores to spare) ------------
stamp "probing teachers (kNN image AUROC on the teacher's features)"
mkdir -p /tmp/probe
PIDS=()  # explicit pids: a bare `wait` would also wait for the log's tee (bash >= 5.1) and never return
for name in committed a b; do
  if [ "$name" = committed ]; then T=assets/teacher/pdn_small.pth; else T=$OUT/teacher_$name/pdn_small.pth; fi
  [ -f "$T" ] || { echo "teacher $name missing"; continue; }
  for cat in $PROBE_CATS; do
    ROOTDIR=$DATA; [ "$cat" = bottle ] || ROOTDIR=$DEMO
    OMP_NUM_THREADS=2 $PY benchmarks/probe_teacher.py --category "$cat" --data-root "$ROOTDIR" --teacher "$T" --bank 20000 \
      > "/tmp/probe/${name}_${cat}.log" 2>&1 &
    PIDS+=($!)
  done
done
for p in "${PIDS[@]}"; do wait "$p"; done
BEST=""; BEST_SUM=-1
for name in committed a b; do
  SUM=0
  for cat in $PROBE_CATS; do
    A=$(grep "distilled teacher" "/tmp/probe/${name}_${cat}.log" 2>/dev/null | grep -o "AUROC [0-9.]*" | cut -d' ' -f2)
    F=$(grep "random-init" "/tmp/probe/${name}_${cat}.log" 2>/dev/null | grep -o "AUROC [0-9.]*" | cut -d' ' -f2)
    echo "probe $name $cat teacher ${A:-?} random ${F:-?}"
    SUM=$(python3 -c "print(${SUM} + float('${A:-0}'))")
  done
  echo "probe $name sum $SUM"
  if [ "$name" != committed ] && python3 -c "import sys; sys.exit(0 if ${SUM} > ${BEST_SUM} else 1)"; then BEST=$name; BEST_SUM=$SUM; fi
done
[ -z "$NEW_TEACHER" ] || BEST=given
stamp "best new teacher: ${BEST:-none}"

# ---- stage 3: EfficientAD-S on bottle, committed vs best new teacher --------------------------------
train_ead() {  # $1 label, $2 teacher file
  local dir=/tmp/repo_$1
  rm -rf "$dir"; mkdir -p "$dir"
  cp -r "$ROOT"/core "$ROOT"/assets "$dir"/
  [ "$2" = assets/teacher/pdn_small.pth ] || cp "$2" "$dir/assets/teacher/pdn_small.pth"
  (cd "$dir" && export INSPECT_HOME=/tmp/ih_ead_$1 PYTHONPATH="$dir:${PYTHONPATH:-}" &&
    $PY -m core train --model efficientad --category bottle --data-root "$DATA" --device "$DEV" --steps "$EAD_STEPS" > /tmp/ead_$1.log 2>&1 &&
    INSPECT_DATA_ROOT="$DATA" $PY -m core evaluate --model efficientad --category bottle --device "$DEV" >> /tmp/ead_$1.log 2>&1;
    echo "efficientad $1 exit $?" >> /tmp/ead_$1.log)
}
stamp "EfficientAD-S bottle, $EAD_STEPS steps each"
train_ead committed assets/teacher/pdn_small.pth &
PIDS=($!)
if [ -n "$NEW_TEACHER" ]; then train_ead new "$NEW_TEACHER" & PIDS+=($!)
elif [ -n "$BEST" ]; then train_ead new "$OUT/teacher_$BEST/pdn_small.pth" & PIDS+=($!); fi
for p in "${PIDS[@]}"; do wait "$p"; done
for f in /tmp/ead_committed.log /tmp/ead_new.log; do [ -f $f ] && { echo "== $f"; grep -v "Warning\|warn(" $f | tail -8; }; done
for h in /tmp/ih_pc /tmp/ih_ead_committed /tmp/ih_ead_new; do
  R=$(find $h -name results.json 2>/dev/null | head -1); [ -n "$R" ] && cp "$R" "$OUT/results_$(basename $h).json"
done
stamp "done"
