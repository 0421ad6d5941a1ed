#!/usr/bin/env bash
# Full-width benchmark rows on a GPU machine: baselines trained and recovered on the GPU; accuracy,
# int8 and latency measured with onnxruntime on that machine's CPU (rows say so).
#   OUT=/some/dir DATA=.data/fashion-mnist bash tools/gpu_bench.sh
# DATA: a folder with the four Fashion-MNIST IDX files (copy /usr/share/datasets/fashion-mnist).
set -u
OUT=${OUT:-results/gpu}
DATA=${DATA:-.data/fashion-mnist}
WORK=${WORK:-/tmp/tensorfold-gpu}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD TENSORFOLD_CACHE=$WORK/cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, onnxruntime, onnx; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, 'onnx', onnx.__version__, 'cpus', __import__('os').cpu_count())" | tee -a "$OUT/machine.txt"
run() {  # model ratio seconds
  timeout "$3" python3 -m tensorfold.cli bench --suite fashion-mnist --data "$DATA" --models "$1" --methods tucker \
      --ratios "$2" --steps 1000 --epochs 8 -o "$WORK/rows" 2>&1 | grep -v -i warning
  cp "$WORK/rows/rows.jsonl" "$OUT/rows.jsonl" 2>/dev/null
}
run resnet18 20 170
run vgg16 32 170
run mobilenetv2 16 150
python3 -m tensorfold.cli bench report "$WORK/rows" -o "$WORK/report" && cp "$WORK/report/bench.md" "$WORK/report/"*.png "$OUT/"
ls -la "$OUT"
