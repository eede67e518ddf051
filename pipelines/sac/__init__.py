"""SAC with Gaussian ERA on MuJoCo (gymnasium) and the DeepMind Control Suite, on TF-Agents.

Run it as `python -m pipelines.sac --help`. TF-Agents needs Keras 2 (`tf_keras`): the entry
point sets TF_USE_LEGACY_KERAS=1 before TensorFlow is imported. Modules: `config` (settings),
`envs` (environments), `networks` (ERA actor head, critic), `agent` (ERASacAgent, SacAgent),
`replay` (transition replay), `entropy` (the executed entropy's range, target and watch),
`checkpoint`, `export` (the policy as a plain SavedModel), `train` (the loop, MLflow), `cli`.
"""

import contextlib
import io
import sys


def _import_gym_quietly():
    """TF-Agents imports gym 0.23 (we use gymnasium), which prints an "unmaintained" banner
    on import; import it once here with that banner swallowed."""
    if "gym" in sys.modules:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            import gym  # noqa: F401
        except ImportError:
            pass


_import_gym_quietly()
