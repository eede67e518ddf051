"""era_keras: Entropy Regularizing Activations (ERA) as Keras 3 layers.

Three activations that put a floor under a model's output entropy (Kang et al., 2025):

- `GaussianERA` / `gaussian_era`: continuous control (diagonal Gaussian policies);
- `SoftmaxERA` / `softmax_era`: classification;
- `LogitERA` and its functions: GRPO for LLMs.

Written with `keras.ops` only, so they run on the TensorFlow, JAX and PyTorch backends.
"""

from era_keras.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from era_keras.gaussian import (
    GaussianERA,
    check_target_entropy,
    delta_loss,
    delta_range,
    entropy_range,
    gaussian_entropy,
    gaussian_era,
    gaussian_era_log_std,
    tanh_gaussian_entropy,
)
from era_keras.lambertw import lambertw_m1_from_log
from era_keras.logit import (
    LogitERA,
    era_scales,
    response_entropy,
    token_entropy,
    token_log_probs,
)
from era_keras.softmax import (
    EntropyFloor,
    SoftmaxERA,
    admissible_range,
    entropy_floor,
    softmax_era,
)

__version__ = "0.1.0"

__all__ = [
    "EntropyFloor",
    "GaussianERA",
    "LogitERA",
    "SoftmaxERA",
    "admissible_range",
    "check_target_entropy",
    "delta_loss",
    "delta_range",
    "entropy_floor",
    "entropy_range",
    "era_scales",
    "expected_calibration_error",
    "fit_temperature",
    "gaussian_entropy",
    "gaussian_era",
    "gaussian_era_log_std",
    "lambertw_m1_from_log",
    "negative_log_likelihood",
    "response_entropy",
    "softmax_era",
    "tanh_gaussian_entropy",
    "token_entropy",
    "token_log_probs",
]
