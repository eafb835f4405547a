#!/usr/bin/env bash
# One CarDD benchmark row on the lent GPU (docs/benchmarks.md, issue 6), once the wheels are installed in
# /tmp/site (device call 1) and the dataset parts are unpacked in /tmp/cardd (calls 2-4), back to back.
# It refuses at once, costing no training time, when the machine went cold and lost either of them.
# Writes NAME.json (the row), NAME.log and NAME-results.csv (per-epoch losses) into $OUT.
#
# Run (on the device, from the repository root):
#   bash scripts/device_cardd.sh stock configs/cardd_stock.yaml
#   bash scripts/device_cardd.sh cardd configs/cardd.yaml
#   bash scripts/device_cardd.sh cardd-s configs/cardd.yaml --model yolov8s.yaml
set -euo pipefail
name=${1:?usage: device_cardd.sh NAME CONFIG [train_cardd.py flags]} config=${2:?config yaml}
shift 2
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}  # the device's python3 holds torch; PYTHON= lets a CPU rehearsal use the venv
out=${OUT:-/tmp/out}
mkdir -p "$out"
n_train=$(ls /tmp/cardd/train/images 2>/dev/null | wc -l || true)
n_val=$(ls /tmp/cardd/valid/images 2>/dev/null | wc -l || true)
if [ ! -d /tmp/site/ultralytics ] || [ "$n_train" != 2796 ] || [ "$n_val" != 799 ]; then  # CarDD train/valid sizes
  echo "device_cardd: wheels or dataset missing (train $n_train/2796, valid $n_val/799): the machine went cold;" \
    "redo the wheel call and the dataset calls first" >&2
  exit 3
fi
[ -f /tmp/cardd-staged/data.yaml ] || "$py" scripts/stage_cardd.py /tmp/cardd --out /tmp/cardd-staged
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" scripts/train_cardd.py --data /tmp/cardd-staged/data.yaml --config "$config" --device 0 \
  --recipe "$name" --out "/tmp/runs/$name" --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
cp "/tmp/runs/$name/train/results.csv" "$out/$name-results.csv"
