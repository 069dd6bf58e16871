#!/usr/bin/env bash
# Installs what the project needs on a fresh machine; quick no-op when everything is there.
#   bash launch/install.sh          # Python packages (+ ffmpeg) for the demo and training
#   bash launch/install.sh --ffcv   # also FFCV (a second storage of the teacher cache) and its build packages
#   bash launch/install.sh --test   # all of it, test tools and a local SLURM (slurm-wlm, munge) for the tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
want_ffcv=0
for arg in "$@"; do
  case $arg in
    --test) want_test=1; want_ffcv=1 ;;
    --ffcv) want_ffcv=1 ;;
    *) echo "usage: bash launch/install.sh [--ffcv] [--test]" >&2; exit 2 ;;
  esac
done

apt_pkgs=(ffmpeg)
(( want_test )) && apt_pkgs+=(slurm-wlm munge)
# FFCV 1.0.2 builds its extension against OpenCV and libjpeg-turbo, found through pkg-config
ffcv_apt=(libopencv-dev libturbojpeg0-dev pkg-config)
(( want_ffcv )) && apt_pkgs+=("${ffcv_apt[@]}")
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if (( ${#missing[@]} )); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "[install] apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[install] WARNING: system packages missing (${missing[*]}); install them as root. Tests that need them skip." >&2
  fi
fi

pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
# torch first and pinned: 2.13.0 resolves to the local CPU wheel on CPU machines (no multi-GB CUDA pull);
# on a GPU node keep the site's CUDA build if one is installed.
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[install] torch==2.13.0"
  pip_q "torch==2.13.0"
fi
extras="dali,train"
(( want_test )) && extras+=",dev"
stamp_mods="torch,numpy,yaml,webdataset,av,nvidia.dali,accelerate,deepspeed,transformers,matplotlib"
(( want_test )) && stamp_mods+=",pytest,pytest_timeout,psutil"
if (( want_ffcv )); then
  if dpkg -s "${ffcv_apt[@]}" >/dev/null 2>&1; then
    extras+=",ffcv"
    stamp_mods+=",ffcv"
  else
    echo "[install] WARNING: FFCV needs ${ffcv_apt[*]} (apt, as root); not installing it. Its tests skip." >&2
  fi
fi
# Everything importable, and the project installed from THIS checkout (an editable install of another
# clone would silently run that clone's code in subprocesses).
repo_dir=$PWD
if ! (cd / && "$PY" - "$stamp_mods" "$repo_dir" <<'PYEOF' 2>/dev/null
import importlib, os, sys
for m in sys.argv[1].split(","):
    importlib.import_module(m)
import w3model
assert os.path.dirname(os.path.dirname(os.path.realpath(w3model.__file__))) == os.path.realpath(sys.argv[2])
PYEOF
)
then
  # deepspeed's setup.py imports torch: build it against the torch installed above, not an isolated one
  "$PY" -c "import deepspeed" 2>/dev/null || { echo "[install] deepspeed"; DS_BUILD_OPS=0 pip_q --no-build-isolation "deepspeed>=0.17"; }
  echo "[install] pip install -e .[$extras]"
  pip_q --no-build-isolation -e ".[$extras]"
fi
echo "[install] ok"
