#!/usr/bin/env bash
# Everything a lent GPU machine should measure, within 10 minutes (tools/gpu_all.py says what):
#   OUT=/some/dir DATA=.data/fashion-mnist bash tools/gpu_all.sh
# DATA: the four Fashion-MNIST IDX files (copy /usr/share/datasets/fashion-mnist), or the name
# fashion-mnist where the dataset is installed. Without CUDA: one line, exit 3, nothing measured.
# For CUDA execution-provider rows the machine's onnxruntime must be onnxruntime-gpu.
set -u
OUT=${OUT:-results/gpu-all}
DATA=${DATA:-.data/fashion-mnist}
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TENSORFOLD_CACHE=${TENSORFOLD_CACHE:-/tmp/tensorfold-gpu-all}
timeout "${LIMIT:-570}" "$PY" tools/gpu_all.py --out "$OUT" --data "$DATA" "$@"
rc=$?
[ $rc -eq 124 ] && echo "gpu_all: stopped at ${LIMIT:-570} s; the rows measured so far are in $OUT/gpu_all.jsonl" >&2
exit $rc
