#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff, configured in pyproject.toml; a finding fails the
# run before any test), then run the tests: everything on the TensorFlow backend, and
# the era_keras layer tests again on JAX and PyTorch, each backend in its own process.
#   scripts/test.sh          fast suite (slow end-to-end tests skipped)
#   scripts/test.sh --all    everything, slow end-to-end runs included (what CI runs)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
marker="not slow"
if [ "${1:-}" = "--all" ]; then marker="slow or not slow"; shift; fi
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/ruff check .
status=0
KERAS_BACKEND=tensorflow .venv/bin/python -m pytest -m "$marker" --ignore=tests/sac "$@" || status=1
# TF-Agents needs tf.keras to be Keras 2 (TF_USE_LEGACY_KERAS=1, set by tests/sac/conftest.py)
# and TF decides that once per process; importing keras-hub (tensorflow_text) settles it on
# Keras 3. So the SAC tests get a process of their own.
KERAS_BACKEND=tensorflow .venv/bin/python -m pytest -m "$marker" tests/sac "$@" || status=1
for backend in jax torch; do
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -m "$marker" tests/era_keras "$@" || status=1
done
exit $status
