#!/usr/bin/env bash
# Prepares, on a CPU machine with internet, what benchmarks/gpu_suite.sh needs on a GPU machine that has none:
# the Python wheels the GPU image lacks (DALI for CUDA 13, PyAV, DeepSpeed, webdataset and their pure-Python
# needs), for CPython 3.12 on x86-64 Linux, in .whl/ (git-ignored), with every wheel over 60 MB split into
# numbered parts of at most 60 MB, and the wheels grouped into call-sized folders .whl/call-1, call-2, ...
# (at most 60 MB each: the device tool carries 64 MiB per call).
#
#   bash benchmarks/gpu_prep.sh            # then, per folder, one device call that carries it:
#     carry [".whl/call-K"]  command: mkdir -p /tmp/w3-wheels && cp .whl/call-K/* /tmp/w3-wheels/
#   and a last call: bash benchmarks/gpu_suite.sh   (it joins the parts and installs from /tmp/w3-wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl
LIMIT=$((60 * 1000 * 1000))
rm -rf "$DEST" && mkdir -p "$DEST/all"

platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {   # binary wheels for the GPU machine's Python
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST/all" "$@"
}
download "nvidia-dali-cuda130==$("$PY" -c 'from importlib.metadata import version; print(version("nvidia-dali-cuda130"))')"
download "av==$("$PY" -c 'import av; print(av.__version__)')"
# what those need and the GPU image lacks (its package list: the device tool's KINDS.md). DALI's image
# codec and nvCOMP libraries are left out: its video decoder does not load them (checked on the CPU build)
download webdataset braceexpand hjson ninja py-cpuinfo msgpack pydantic pydantic-core annotated-types \
  typing-inspection astunparse gast optree nvtx makefun libcst
# DeepSpeed publishes a source distribution only: build its (pure Python, ops compiled on first use) wheel here
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST/all" \
  "deepspeed==$("$PY" -c "from importlib.metadata import version; print(version('deepspeed'))")"

# split what is over the limit; group the rest into call folders of at most LIMIT bytes
call=1; used=0
mkdir -p "$DEST/call-$call"
place() {   # place FILE into the current call folder, opening a new one when it would overflow
  local size; size=$(stat -c %s "$1")
  if (( used + size > LIMIT && used > 0 )); then call=$((call + 1)); used=0; mkdir -p "$DEST/call-$call"; fi
  mv "$1" "$DEST/call-$call/"; used=$((used + size))
}
for whl in "$DEST"/all/*.whl; do
  if (( $(stat -c %s "$whl") > LIMIT )); then
    split -b "$LIMIT" -d -a 2 "$whl" "$whl.part-"
    rm "$whl"
  fi
done
for f in "$DEST"/all/*; do place "$f"; done
rmdir "$DEST/all"
echo "[gpu_prep] $(find "$DEST" -type f | wc -l) files in $call call folder(s):"
du -sh "$DEST"/call-*
echo "[gpu_prep] per folder, one device call: carry [\".whl/call-K\"], command:"
echo "           mkdir -p /tmp/w3-wheels && cp .whl/call-K/* /tmp/w3-wheels/"
echo "[gpu_prep] then: bash benchmarks/gpu_suite.sh (joins *.part-NN, installs into /tmp/site, measures)"
