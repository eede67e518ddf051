#!/usr/bin/env bash
# Set up (scripts/setup.sh), then the main job on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m era_keras.demo "$@"
