"""`python -m pipelines.sac`: TF-Agents needs these set before TensorFlow is imported."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["KERAS_BACKEND"] = "tensorflow"

from pipelines.common.native_logs import import_tensorflow  # noqa: E402

import_tensorflow()

from pipelines.common.errors import run_cli  # noqa: E402
from pipelines.sac.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
