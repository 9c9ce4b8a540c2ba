#!/usr/bin/env bash
# The one prepared GPU run (issue 8): the same benchmark as on the CPU, on CUDA, plus the training step at
# the batch sizes a GPU trains with. Every step has its own time limit and writes its JSON as soon as it ends,
# so a slow or failing step costs only itself.
#
#   OUT=benchmarks/results/gpu bash benchmarks/gpu.sh          # PY=python3 by default (the GPU image's Python)
#
# Results: $OUT/cuda.json (inference), $OUT/cuda_train.json (training step), $OUT/versions.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $PY -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__,
'| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '|', torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/versions.txt"

# inference: conv ceiling, ours fp32 / bf16 (forward, Detect, end to end from uint8 frames) vs torchvision fp32
timeout 200 $PY -m benchmarks.benchmark --device cuda --batches 1,8,64 --reps 10 \
    --sections conv,ours,torchvision --json "$OUT/cuda.json" || echo "inference benchmark failed (rc $?)"

# training step (forward + matching + loss + backward + SGD), faithful SSD300, fp32 and AMP (bf16)
timeout 100 $PY -m benchmarks.bench_train --device cuda --batch_size 64 --configs fp32-cl amp-cl \
    --iters 10 --warmup 3 --json "$OUT/cuda_train.json" || echo "training benchmark failed (rc $?)"

# Detect alone at batch 8 / 64: time, fixed-point rounds (= host syncs), CUDA result == CPU result
timeout 60 $PY -m benchmarks.detect_cuda_check 2>&1 | tee "$OUT/detect_cuda.txt" || echo "Detect check failed"
