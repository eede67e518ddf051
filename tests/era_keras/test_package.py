"""The package stays light and exposes what the README promises."""

import subprocess
import sys

import era_keras


def test_import_adds_nothing_beyond_keras_and_numpy():
    code = (
        "import sys, keras, numpy\n"
        "before = {m.split('.')[0] for m in sys.modules}\n"
        "import era_keras\n"
        "after = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(after - before))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip().splitlines()[-1]
    assert out == "['era_keras']"


def test_public_api():
    for name in [
        "GaussianERA", "SoftmaxERA", "LogitERA", "gaussian_era", "softmax_era",
        "entropy_floor", "admissible_range", "delta_loss", "tanh_gaussian_entropy",
        "token_entropy", "response_entropy", "era_scales", "token_log_probs",
        "fit_temperature", "expected_calibration_error",
    ]:
        assert callable(getattr(era_keras, name)), name
