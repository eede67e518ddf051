"""`python -m pipelines.sac`: TF-Agents needs these set before TensorFlow is imported."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipelines.common.errors import run_cli  # noqa: E402
from pipelines.sac.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
