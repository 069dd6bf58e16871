#!/usr/bin/env bash
# The main job on its built-in small dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
for arch in tsn tsm tsm_cbam tsm_nl tsm_w3; do
  python3 -m w3model.flops --arch "$arch" --depth 50 --frames 8 --classes 174
done
