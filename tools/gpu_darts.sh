#!/usr/bin/env bash
# DARTS with and without its collapse guard, trained on the GPU (the searches that reach 50 epochs
# there take hours on two CPU cores). Carry .wheels and .data.   OUT=/some/dir bash tools/gpu_darts.sh
set -u
OUT=${OUT:-results/gpu-darts}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .wheels/*.whl 2>&1 | grep -v -i warning | tail -3
export PYTHONPATH=$PWD TENSORFOLD_CACHE=/tmp/tensorfold-cache
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/machine.txt"
python3 tools/bench_nas.py --only darts --torch-device cuda --budget-minutes "${BUDGET:-2.5}" --seeds "${SEEDS:-3}" \
    --jobs 6 --final-steps "${FINAL:-800}" --data .data/fashion-mnist --out "$OUT/darts.md" 2> "$OUT/log.txt"
tail -5 "$OUT/log.txt"
