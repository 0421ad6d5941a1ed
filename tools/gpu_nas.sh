#!/usr/bin/env bash
# The NAS benchmark on the GPU machine's 16 CPU cores: every run single-threaded, side by side.
#   OUT=/some/dir bash tools/gpu_nas.sh      (carry .wheels and .data: optuna & co. as wheels, Fashion-MNIST)
set -u
OUT=${OUT:-results/gpu-nas}
mkdir -p "$OUT/nas"
python3 -m pip install -q --no-index --no-deps .wheels/*.whl 2>&1 | grep -v -i warning | tail -3
export PYTHONPATH=$PWD TENSORFOLD_CACHE=/tmp/tensorfold-cache
python3 -c "import os, torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, 'cpus', os.cpu_count())" | tee "$OUT/machine.txt"
python3 tools/bench_nas.py --budget-minutes "${BUDGET:-4}" --proxy-steps "${PROXY:-60}" --seeds "${SEEDS:-3}" --jobs "${JOBS:-18}" \
    --final-steps "${FINAL:-800}" --data .data/fashion-mnist --out "$OUT/nas.md" --plots "$OUT/nas" 2> "$OUT/log.txt"
tail -5 "$OUT/log.txt"
