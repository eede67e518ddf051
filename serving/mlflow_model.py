"""A SavedModel signature as an MLflow model, for `mlflow models serve` without TF Serving.

The logged model holds the SavedModel as an artifact and a small pyfunc that runs one
signature the way TF Serving does (`serving.signature_runner.SignatureRunner`); so serving
it needs TensorFlow and MLflow but none of era_keras, Keras, keras-hub or TF-Agents. Its
MLflow signature is the SavedModel's, so MLflow's scoring server checks input names,
shapes and dtypes before the model sees a request.

    python -m pipelines.export --run-id <id> --export-base exports --model-name image \\
        --log-mlflow-model
    mlflow models serve -m runs:/<id>/servable -h 127.0.0.1 -p 5000 --env-manager local
"""

import pathlib

import mlflow

from serving.saved_model import SERVING_SIGNATURE, example_inputs, signature_specs

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
        if not isinstance(model_input, dict):
            names = sorted(self._runner.input_tensors)
            if len(names) != 1:
                raise ValueError(
                    f"This model takes named inputs {names}: send "
                    '{"inputs": {name: batch, ...}}.'
                )
            model_input = {names[0]: model_input}
        outputs = self._runner(model_input)
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def _schema(specs):
    from mlflow.types.schema import Schema, TensorSpec

    return Schema(
        [
            TensorSpec(dtype, tuple(-1 if size is None else size for size in shape), name)
            for name, (dtype, shape) in specs.items()
        ]
    )


def mlflow_signature(saved_model_dir, signature_name=SERVING_SIGNATURE):
    """The MLflow ModelSignature of a SavedModel signature (unknown sizes become -1)."""
    from mlflow.models import ModelSignature

    input_specs, output_specs = signature_specs(saved_model_dir, signature_name)
    return ModelSignature(inputs=_schema(input_specs), outputs=_schema(output_specs))


def log_saved_model(saved_model_dir, name=MLFLOW_MODEL_NAME, signature_name=SERVING_SIGNATURE):
    """Log `saved_model_dir` as a servable MLflow model in the active run; returns ModelInfo.

    Serve it with `mlflow models serve -m <model_info.model_uri> --env-manager local`.
    """
    import tensorflow as tf

    input_specs, _ = signature_specs(saved_model_dir, signature_name)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=SavedModelSignature(signature_name),
        artifacts={SAVED_MODEL_ARTIFACT: str(saved_model_dir)},
        signature=mlflow_signature(saved_model_dir, signature_name),
        input_example=example_inputs(input_specs, batch_size=1),
        code_paths=[str(pathlib.Path(__file__).parent)],
        pip_requirements=[f"tensorflow=={tf.__version__}", f"mlflow=={mlflow.__version__}"],
    )
