#!/usr/bin/env bash
# Device-model quality on the GPU machine's CPUs (a second host),
# and what its onnxruntime offers (CUDA or not).
#   OUT=/some/dir bash tools/gpu_device_model.sh   (carry .wheels: scikit-learn & co.; .data/tf-cache: the PP-OCR det model)
set -u
OUT=${OUT:-results/gpu-device-model}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .wheels/*.whl 2>&1 | grep -v -i warning | tail -3
export PYTHONPATH=$PWD TENSORFOLD_CACHE=/tmp/tensorfold-cache
mkdir -p "$TENSORFOLD_CACHE" && cp -r .data/tf-cache/models "$TENSORFOLD_CACHE/"
python3 -c "import os, onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers(), 'cpus', os.cpu_count())" | tee "$OUT/machine.txt"
grep -m1 "model name" /proc/cpuinfo | tee -a "$OUT/machine.txt"
python3 -m pip list 2>/dev/null | grep -i -E "^(onnx|torch|scikit|numpy|scipy)" | tee -a "$OUT/machine.txt"
timeout "${LIMIT:-420}" python3 tools/bench_hardware_aware.py --method tucker --quality-only --threads "${THREADS:-0}" \
    --out "$OUT/device-model-quality.md" 2> "$OUT/log.txt"
tr '\r' '\n' < "$OUT/log.txt" | grep -v "it/s\|kernel/s" | tail -5
cat "$OUT/device-model-quality.md" | grep "^|"
