# Sourced by the GPU scripts of this folder (after they set OUT and PY): the environment, a log in
# $OUT/gpu_log.txt, a time-stamped `stamp` and the machine's GPU and torch versions.
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 INSPECT_AUTOTRAIN=0
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"  # benchmarks/ import core/ (no editable install there)
exec > >(tee -a "$OUT/gpu_log.txt") 2>&1
stamp() { echo "[$(date +%T)] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
