#!/usr/bin/env bash
# Command 1: set up, then run the whole job on the embedded synthetic default:
#   synthetic data + video -> train (CPU demo preset, or GPU if present) -> VOC07 mAP -> annotated video.
# Every step is the real CLI with visible flags. Outputs go to quickstart_out/ (override with OUT=...).
# SSD_PYTHON=/path/to/python skips the .venv setup and runs the steps with that interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${SSD_PYTHON:-}" ]; then
  PY=$SSD_PYTHON            # an interpreter that already has requirements.txt (tests/test_quickstart.py without .venv)
else
  bash scripts/setup_env.sh
  PY=.venv/bin/python
fi
OUT=${OUT:-quickstart_out}
NUM=${NUM:-4000}            # synthetic images (80% train / 5% val / 15% test)
ITERS=${ITERS:-1200}        # training iterations of the cpu-demo preset (batch 16); ~13 min on 2 cores
FRAMES=${FRAMES:-240}       # frames of the synthetic video
BUDGET=${BUDGET:-780}       # seconds: training stops (and saves) here on a slower machine, keeping the job < 15 min
mkdir -p "$OUT"
start=$(date +%s)
run() { echo; echo "\$ $*"; "$@"; }

run $PY -m data.synthetic --out "$OUT/data" --num "$NUM" --seed 0 \
    --video "$OUT/synthetic.mp4" --frames "$FRAMES" --fps 24 --width 480 --height 360 --audio

run $PY train.py --dataset custom --dataset_root "$OUT/data" --preset cpu-demo --basenet none \
    --max_iter "$ITERS" --time_budget "$BUDGET" --save_folder "$OUT/weights" --num_workers 0 --seed 0 --log_every 20
CKPT="$OUT/weights/ssd300_custom_final.pth"

run $PY eval.py --dataset custom --dataset_root "$OUT/data" --set test --trained_model "$CKPT" \
    --save_folder "$OUT/eval" --json "$OUT/eval.json" --batch_size 16 --num_workers 0

run $PY object_detection.py "$CKPT" "$OUT/synthetic.mp4" -o "$OUT/annotated.mp4" \
    --json "$OUT/detections.json" --threshold 0.3

# the annotated frame with the most detections, as a PNG (for README / a quick look)
$PY - "$OUT/annotated.mp4" "$OUT/detections.json" "$OUT/annotated_frame.png" <<'PYEOF'
import json, sys, imageio.v2 as imageio
frames = json.load(open(sys.argv[2]))["frames"]
best = max(frames, key=lambda f: len(f["detections"]))["frame"] if frames else 0
for i, frame in enumerate(imageio.get_reader(sys.argv[1])):
    if i == best:
        break
imageio.imwrite(sys.argv[3], frame)
PYEOF

mAP=$($PY -c "import json,sys; print(f\"{json.load(open('$OUT/eval.json'))['mAP']:.4f}\")")
elapsed=$(( $(date +%s) - start ))
echo
echo "== quickstart done in ${elapsed}s"
echo "checkpoint:      $CKPT"
echo "VOC07 mAP (test): $mAP   (details: $OUT/eval.json)"
echo "annotated video: $OUT/annotated.mp4   (detections: $OUT/detections.json)"
echo "a frame of it:   $OUT/annotated_frame.png"
