"""A SavedModel signature as an MLflow model, for `mlflow models serve` without TF Serving.

The logged model holds the SavedModel as an artifact and a small pyfunc that runs one
signature the way TF Serving does (`serving.signature_runner.SignatureRunner`); so serving
it needs TensorFlow and MLflow but none of era_keras, Keras, keras-hub or TF-Agents.

The model carries no MLflow input schema on purpose: with one, MLflow's scoring server
casts a request to the schema's dtypes before the model sees it (0.5 sent to a uint8
input becomes 0). Without it, the runner checks names, rank, sizes and dtypes itself and
refuses what does not fit with a message naming the expected spec. The SavedModel's specs
are recorded in the model's metadata (`serving_inputs`, `serving_outputs`) instead.

    python -m pipelines.export --run-id <id> --export-base exports --model-name image \\
        --log-mlflow-model
    env PATH=.venv/bin:"$PATH" mlflow models serve -m models:/<model id> -h 127.0.0.1 \\
        -p 5000 --env-manager local

(`serve_command` writes that line with this environment's paths: `mlflow models serve`
starts its server as `uvicorn` found on PATH, so it fails unless the environment's bin
directory is there.)
"""

import pathlib
import shlex
import sys

import mlflow
import numpy as np

from serving.saved_model import SERVING_SIGNATURE, signature_specs
from serving.signature_runner import InputSpecError, describe_spec, refusal_message

MLFLOW_MODEL_NAME = "servable"
SAVED_MODEL_ARTIFACT = "saved_model"


class SavedModelSignature(mlflow.pyfunc.PythonModel):
    """pyfunc: {input name: array} (or one array) -> the signature's outputs."""

    def __init__(self, signature_name=SERVING_SIGNATURE):
        self.signature_name = signature_name

    def load_context(self, context):
        from serving.signature_runner import SignatureRunner

        self._runner = SignatureRunner(
            context.artifacts[SAVED_MODEL_ARTIFACT], self.signature_name
        )

    def predict(self, context, model_input, params=None):
        import tensorflow as tf

        try:
            outputs = self._runner(self._named_inputs(model_input))
        except InputSpecError as error:
            self._refuse(str(error))
        except tf.errors.InvalidArgumentError as error:  # the graph's own request checks
            self._refuse(refusal_message(error))
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    @staticmethod
    def _refuse(reason):
        # An MlflowException with this code is what the scoring server answers with 400.
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        raise MlflowException(reason, error_code=INVALID_PARAMETER_VALUE) from None

    def _named_inputs(self, model_input):
        if hasattr(model_input, "columns"):
            # The row ("instances") format of named inputs arrives as a DataFrame.
            return {str(c): np.stack(model_input[c].to_numpy()) for c in model_input.columns}
        if isinstance(model_input, dict):
            return model_input
        names = sorted(self._runner.input_tensors)
        if len(names) != 1:
            raise InputSpecError(
                f"this model takes named inputs {names}: send "
                '{"inputs": {name: batch, ...}}'
            )
        return {names[0]: model_input}


def serve_command(model_uri, host="127.0.0.1", port=5000):
    """The shell command that serves `model_uri` with this environment's MLflow, whether or
    not the environment is activated."""
    bin_dir = pathlib.Path(sys.executable).parent  # not resolved: a venv's python is a link
    return (f'env PATH={shlex.quote(str(bin_dir))}:"$PATH" '
            f"{shlex.quote(str(bin_dir / 'mlflow'))} models serve -m {shlex.quote(model_uri)} "
            f"-h {host} -p {port} --env-manager local")


def spec_metadata(saved_model_dir, signature_name=SERVING_SIGNATURE):
    """{"serving_inputs": {name: "uint8 [-1, 28, 28, 1]"}, "serving_outputs": {...}}."""
    input_specs, output_specs = signature_specs(saved_model_dir, signature_name)
    return {
        "signature_name": signature_name,
        "serving_inputs": {name: describe_spec(*spec) for name, spec in input_specs.items()},
        "serving_outputs": {name: describe_spec(*spec) for name, spec in output_specs.items()},
    }


def log_saved_model(saved_model_dir, name=MLFLOW_MODEL_NAME, signature_name=SERVING_SIGNATURE):
    """Log `saved_model_dir` as a servable MLflow model in the active run; returns ModelInfo.

    Serve it with `serve_command(model_info.model_uri)`.
    """
    import tensorflow as tf

    return mlflow.pyfunc.log_model(
        name=name,
        python_model=SavedModelSignature(signature_name),
        artifacts={SAVED_MODEL_ARTIFACT: str(saved_model_dir)},
        metadata=spec_metadata(saved_model_dir, signature_name),
        code_paths=[str(pathlib.Path(__file__).parent)],
        pip_requirements=[f"tensorflow=={tf.__version__}", f"mlflow=={mlflow.__version__}"],
    )
