#!/usr/bin/env bash
# The main job on its built-in small dataset, end to end on one machine (CPU is enough, < 10 minutes on 2
# cores): synthesise a small Something-Something V2 set in the owners' published layout -> shard it ->
# train TSM+W3 (stage 1, the teacher) -> evaluate -> cache the teacher's features -> train the MFR student
# (stage 2) from the cache -> print both top-1 and the cache's size -> attention pictures -> predict a few of
# its source videos with the exported model.
#   bash launch/demo.sh            # everything under runs/demo/
#   DEMO_DIR=/tmp/demo bash launch/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
DEMO_DIR=${DEMO_DIR:-runs/demo}
mkdir -p "$DEMO_DIR"

echo "== 1/6 model: parameters and GFLOPs of the five architectures (ResNet-50, 8 frames, 174 classes)"
for arch in tsn tsm tsm_cbam tsm_nl tsm_w3; do
  python3 -m w3model.flops --arch "$arch" --depth 50 --frames 8 --classes 174
done

echo "== 2/6 synthesise a small sthv2 dataset in its published layout (webm + JSON annotations)"
rm -rf "$DEMO_DIR/raw"
python3 pipeline/synth.py --dataset sthv2 --out "$DEMO_DIR/raw" --classes 4 --clips-per-class 48 \
  --num-frames 24 --width 64 --height 48

echo "== 3/6 shard it (VP9, which DALI decodes on the CPU)"
python3 pipeline/shard.py --dataset sthv2 --root "$DEMO_DIR/raw" --out "$DEMO_DIR/shards" --codec vp9 \
  --short-side 0 --no-progress
python3 pipeline/shard.py verify "$DEMO_DIR/shards/sthv2"

echo "== 4/6 stage 1: train TSM+W3, the teacher (launch/smoke.yaml), through the DALI loader, evaluate"
python3 train/run.py --cfg launch/smoke.yaml --set out_dir="$DEMO_DIR/train" \
  --set data.shards="$DEMO_DIR/shards"

echo "== the best checkpoint under the multi-view test protocol (2 clips x 3 crops), and a plain state dict"
python3 train/run.py --cfg launch/smoke.yaml --set out_dir="$DEMO_DIR/train" \
  --set data.shards="$DEMO_DIR/shards" --eval-only --set eval.mode=test
python3 train/export.py "$DEMO_DIR/train" "$DEMO_DIR/train/model.pt"

echo "== 5/6 cache the teacher's refined features: 4 views of every training clip (train/teacher_cache.py)"
MFR_SETS=(--set out_dir="$DEMO_DIR/student" --set data.shards="$DEMO_DIR/shards"
          --set mfr.teacher="$DEMO_DIR/train" --set mfr.cache="$DEMO_DIR/teacher_cache")
python3 train/teacher_cache.py build --cfg launch/smoke_mfr.yaml "${MFR_SETS[@]}"
python3 train/teacher_cache.py verify "$DEMO_DIR/teacher_cache"

echo "== 6/6 stage 2: the MFR student (launch/smoke_mfr.yaml) from the cache, evaluate"
python3 train/run.py --cfg launch/smoke_mfr.yaml "${MFR_SETS[@]}"
python3 - "$DEMO_DIR" <<'PYEOF'
import json, sys
from pathlib import Path
from train.teacher_cache import info
demo = Path(sys.argv[1])
for name in ("train", "student"):
    best = json.loads((demo / name / "checkpoints" / "best" / "trainer_state.json").read_text())["best"]
    role = "teacher (stage 1)" if name == "train" else "student (stage 2, MFR)"
    print(f"{role:24s} best val top-1 {best['value']:.1f} % at step {best['step']}")
cache = info(demo / "teacher_cache")
print(f"teacher cache: {cache['clips']} clips x {cache['views']} views, {cache['bytes'] / 2**20:.1f} MiB "
      f"({cache['record_bytes'] / 1024:.1f} KiB per view, {cache['dtype']})")
PYEOF

echo "== attention pictures (the paper's Fig. 3 layout): spatial masks on validation clips, channel mask over time"
python3 train/visualize.py "$DEMO_DIR/train" --shards "$DEMO_DIR/shards/sthv2" --split val \
  --out "$DEMO_DIR/train/attention.png"

echo "== predict a few source videos with the exported model (train/predict.py): the validation clip of each"
echo "   class, 0..3 = Moving something right, down-right, down, down-left"
python3 train/predict.py "$DEMO_DIR/train/model.pt" --topk 2 --no-progress \
  "$DEMO_DIR"/raw/20bn-something-something-v2/{1001,1049,1097,1145}.webm
