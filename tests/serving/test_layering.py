"""`serving/` is the bottom library: importing any of its modules never imports the
pipelines (nor era_keras), so TF Serving tooling works without the application above it."""

import pathlib
import subprocess
import sys

import pytest

SERVING = pathlib.Path(__file__).resolve().parents[2] / "serving"
MODULES = sorted(f"serving.{path.stem}" for path in SERVING.glob("*.py") if path.stem != "__init__")


def test_every_serving_module_is_checked():
    assert {"serving.export", "serving.layout", "serving.client", "serving.saved_model",
            "serving.signature_runner", "serving.mlflow_model"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_importing_a_serving_module_imports_no_pipeline(module):
    # A fresh interpreter: this test process has imported the pipelines already.
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('pipelines', 'era_keras'))\n"
        "print(','.join(leaked))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"
