"""docs/grpo.md's laptop walk-through (Hugging Face checkpoint -> GRPO + ERA -> SavedModel
-> Hugging Face) runs as written."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def walkthrough():
    text = (ROOT / "docs" / "grpo.md").read_text()
    match = re.search(r"<!-- walkthrough: laptop -->\n```bash\n(.*?)\n```", text, re.S)
    assert match, "docs/grpo.md lost its laptop walk-through block"
    return match.group(1)


@pytest.mark.slow
def test_laptop_walkthrough_runs_as_written(tmp_path, tracking_uri):
    """Run in a fresh directory, with `python` the project's interpreter and the project on
    the path, as from the repository root."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "MLFLOW_TRACKING_URI": tracking_uri,
           "PYTHONPATH": str(ROOT),
           "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    hf_dir = tmp_path / "runs" / "hf-walkthrough" / "export" / "hf"
    assert f"export (hf_dir): {pathlib.Path('runs/hf-walkthrough/export/hf')}" in result.stdout \
        or f"export (hf_dir): {hf_dir}" in result.stdout
    assert "token_log_probs" in result.stdout  # the SavedModel answered
    assert "<|im_start|>user\n23+48-17=<|im_end|>" in result.stdout  # transformers' chat turn
