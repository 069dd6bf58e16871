#!/usr/bin/env bash
# Every GPU measurement of docs/BENCHMARKS.md in one call (at most 8 minutes on one H100/H200): writes
# $OUT/gpu_suite.json and $OUT/gpu_suite.md (goal, figure, met or not), and each step's own JSON beside them.
#
#   bash benchmarks/gpu_prep.sh      # first, on a CPU machine with internet: the wheels the GPU image lacks
#   bash benchmarks/gpu_suite.sh     # on the GPU machine (OUT=<folder> to choose where results go)
#   bash benchmarks/gpu_suite.sh --smoke   # on a CPU: every step at a toy size, to check the plumbing
#
# Steps (each with its own time limit; a failed or timed-out step is reported, the others still run):
#   data      synthetic sthv2, sharded as H.264 (NVDEC) with short side 256
#   decode    DALI 'mixed' decode vs the CPU reference (PyAV): PSNR        benchmarks/decode_agreement.py
#   loader    DALI on the GPU vs the reference loader with 16 workers        benchmarks/loader_throughput.py
#   step      TSM vs TSM+W3, bf16, batch 32, channels_last, eager/compiled   benchmarks/model_step_time.py
#   images    plain ResNet-50 image training on synthetic input              benchmarks/resnet50_images.py
#   train     R50+W3 8x224 bf16 through the real loader and trainer          benchmarks/train_throughput.py
#   mfr       stage 2: cache vs online teacher                               benchmarks/mfr_cache.py
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SMOKE=0
[[ ${1:-} == --smoke ]] && SMOKE=1
OUT=${OUT:-$REPO/runs/gpu_suite}
WORK=${WORK:-/tmp/w3-gpu-suite}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
log() { echo "[gpu_suite $(date +%H:%M:%S)] $*"; }

# --- the wheels gpu_prep.sh made (carried to /tmp/w3-wheels, or still in .whl/call-*): join, install
wheels=$WORK/wheels
if compgen -G "/tmp/w3-wheels/*" >/dev/null || compgen -G ".whl/call-*/*" >/dev/null; then
  rm -rf "$wheels" && mkdir -p "$wheels"
  cp /tmp/w3-wheels/* .whl/call-*/* "$wheels"/ 2>/dev/null || true
  for first in "$wheels"/*.whl.part-00; do
    [[ -e $first ]] || continue
    whl=${first%.part-00}
    cat "$whl".part-* > "$whl" && rm "$whl".part-*
  done
  log "installing $(ls "$wheels"/*.whl | wc -l) wheels into $WORK/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$wheels"/*.whl || log "warning: installing the wheels failed; steps that need them will say so"
  export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

if (( SMOKE )); then
  DEVICE=cpu; CODEC=vp9; CLASSES=2; PER_CLASS=8; FRAMES=16; WIDTH=80; HEIGHT=64; SHORT=64; WORKERS=2; PY_WORKERS=1
  STEP_ARGS=(--batch 1 --frames 2 --size 64 --depth 18 --warmup 1 --iters 2)
  IMAGE_ARGS=(--batch 2 --steps 2 --warmup 1); TRAIN_PRESET=cpu; MFR_PRESET=cpu; LIMIT=600
else
  DEVICE=cuda; CODEC=h264; CLASSES=8; PER_CLASS=96; FRAMES=48; WIDTH=320; HEIGHT=256; SHORT=256; WORKERS=16; PY_WORKERS=4
  STEP_ARGS=(--bf16 --batch 32 --channels-last --frames 8 --size 224 --depth 50 --warmup 3 --iters 10)
  IMAGE_ARGS=(--bf16 --channels-last --batch 256 --steps 20 --warmup 5); TRAIN_PRESET=h100; MFR_PRESET=h100
  LIMIT=150
fi
status_file=$OUT/steps.tsv
: > "$status_file"
BUDGET=${BUDGET:-470}   # seconds for the whole suite: each step's limit is cut to what is left of it
step() {   # step NAME SECONDS COMMAND...: run it with a time limit, log to $OUT/NAME.log, record the status
  local name=$1 seconds=$2; shift 2
  local start=$SECONDS rc=0 left=$((BUDGET - SECONDS - 10))
  (( SMOKE )) || (( seconds <= left )) || seconds=$left
  if (( seconds < 10 )); then
    log "step $name: skipped, the suite's ${BUDGET} s are spent"
    printf '%s\t%s\t%s\n' "$name" 124 0 >> "$status_file"
    return
  fi
  log "step $name (limit ${seconds}s): $*"
  timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$status_file"
  tail -n 3 "$OUT/$name.log"
  log "step $name: status $rc after $((SECONDS - start)) s"
}

DATA=$WORK/data
step data "$LIMIT" python3 - "$DATA" "$CODEC" "$CLASSES" "$PER_CLASS" "$FRAMES" "$WIDTH" "$HEIGHT" "$SHORT" \
  "$WORKERS" <<'PYEOF'
import sys
from pipeline.synth import synthesize_and_shard
out, codec, classes, per_class, frames, width, height, short, workers = sys.argv[1:]
print(synthesize_and_shard("sthv2", out, codec=codec, short_side=int(short), shard_size=64, workers=int(workers),
                           classes=int(classes), clips_per_class=int(per_class), num_frames=int(frames),
                           width=int(width), height=int(height)))
PYEOF
SHARDS=$DATA/shards-$CODEC

step decode "$LIMIT" python3 benchmarks/decode_agreement.py "$SHARDS/sthv2" --device "$DEVICE" --json
grep '^{' "$OUT/decode.log" | tail -n 1 > "$OUT/decode.json"

step loader "$LIMIT" python3 benchmarks/loader_throughput.py --work "$DATA" --codecs "$CODEC" --device "$DEVICE" \
  --threads "$WORKERS" --py-workers "$PY_WORKERS" --reference-workers "$WORKERS" --epochs 3 --out "$OUT/loader.json"

step step "$((LIMIT * 2))" python3 benchmarks/model_step_time.py --device "$DEVICE" "${STEP_ARGS[@]}" \
  --compile none,default --json
grep '^{' "$OUT/step.log" | tail -n 1 > "$OUT/step.json"

step images "$LIMIT" python3 benchmarks/resnet50_images.py --device "$DEVICE" "${IMAGE_ARGS[@]}" --json
grep '^{' "$OUT/images.log" | tail -n 1 > "$OUT/images.json"

step train "$LIMIT" python3 benchmarks/train_throughput.py --preset "$TRAIN_PRESET" --shards "$SHARDS" \
  --work "$WORK/train" --archs tsm_w3 --threads "$WORKERS"
cp "$WORK/train/train_throughput.json" "$OUT/train.json" 2>/dev/null

step mfr "$((LIMIT * 2))" python3 benchmarks/mfr_cache.py --preset "$MFR_PRESET" --work "$WORK/mfr" \
  --shards "$SHARDS" --threads "$WORKERS"
cp "$WORK/mfr/mfr_cache.json" "$OUT/mfr.json" 2>/dev/null

python3 benchmarks/gpu_report.py "$OUT" --smoke "$SMOKE"
log "results: $OUT/gpu_suite.md and $OUT/gpu_suite.json"
