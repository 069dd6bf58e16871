#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs the whole suite (slow tests too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh --test
exec python3 -m pytest tests "$@"
