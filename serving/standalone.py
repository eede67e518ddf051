"""Run a SavedModel's signature in a fresh process that cannot import this project.

That is the load TF Serving does: the graph alone, with no era_keras, Keras or keras-hub
Python code behind it. If ERA's math were not baked into the graph (say, a layer that
only works through its Python class), loading or calling it here fails.
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

BLOCKED_MODULES = (
    "era_keras",
    "keras_hub",
    "keras",
    "tf_keras",
    "tf_agents",
    "pipelines",
    "serving",
)

_SCRIPT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
import numpy as np
import tensorflow as tf

loaded = tf.saved_model.load({saved_model_dir!r})
signature = loaded.signatures[{signature_name!r}]
with np.load({inputs_file!r}) as inputs:
    feeds = {{name: tf.constant(inputs[name]) for name in inputs.files}}
outputs = signature(**feeds)
np.savez({outputs_file!r}, **{{name: value.numpy() for name, value in outputs.items()}})
"""


def _clean_environment():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def predict_standalone(
    saved_model_dir, inputs, signature_name="serving_default", timeout=600
):
    """Outputs {name: array} of `signature_name` on `inputs` {name: array}, computed in a
    subprocess where era_keras, Keras, keras-hub, TF-Agents and this repo are unimportable.
    """
    saved_model_dir = str(pathlib.Path(saved_model_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="standalone-") as workdir:
        inputs_file = str(pathlib.Path(workdir) / "inputs.npz")
        outputs_file = str(pathlib.Path(workdir) / "outputs.npz")
        np.savez(inputs_file, **{name: np.asarray(v) for name, v in inputs.items()})
        script = _SCRIPT.format(
            blocked=BLOCKED_MODULES,
            saved_model_dir=saved_model_dir,
            signature_name=signature_name,
            inputs_file=inputs_file,
            outputs_file=outputs_file,
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_environment(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"The SavedModel at {saved_model_dir} did not load and run without the "
                f"project's Python code (as TF Serving loads it):\n{result.stderr[-3000:]}"
            )
        with np.load(outputs_file) as outputs:
            return {name: outputs[name] for name in outputs.files}
