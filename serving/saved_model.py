"""Reading SavedModels the way TF Serving does: find them, and read a signature's specs.

Specs come from the SavedModel's MetaGraphDef (saved_model.pb), the same place TF
Serving's metadata API reads them from, so nothing is loaded or executed here.
"""

import pathlib

import numpy as np

SAVED_MODEL_FILE = "saved_model.pb"
SERVING_SIGNATURE = "serving_default"


class SavedModelError(ValueError):
    """A SavedModel that is missing, unreadable, or lacks the signature asked for."""

    def __init__(self, message, missing_signature=False):
        super().__init__(message)
        self.missing_signature = missing_signature


def is_saved_model(path):
    return (pathlib.Path(path) / SAVED_MODEL_FILE).is_file()


def find_saved_models(root):
    """Every directory at or below `root` that holds a SavedModel, shallowest first."""
    root = pathlib.Path(root)
    found = sorted(
        (path.parent for path in root.rglob(SAVED_MODEL_FILE)),
        key=lambda path: (len(path.parts), str(path)),
    )
    # A SavedModel's own assets may hold another saved_model.pb; keep the outer one.
    outer = []
    for path in found:
        if not any(parent in outer for parent in path.parents):
            outer.append(path)
    return outer


def read_meta_graph(saved_model_dir):
    """The MetaGraphDef of a SavedModel; a SavedModelError if the file is missing or damaged."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = pathlib.Path(saved_model_dir) / SAVED_MODEL_FILE
    if not path.is_file():
        raise SavedModelError(f"No SavedModel at {saved_model_dir}: {path} is missing.")
    try:
        saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except (DecodeError, RuntimeWarning) as error:
        raise SavedModelError(
            f"{path} is not a readable SavedModel ({error}); it is damaged or not a "
            "SavedModel: export the model again"
        ) from None
    if not saved_model.meta_graphs:
        raise SavedModelError(
            f"{path} holds no MetaGraph (empty or damaged); export the model again"
        )
    return saved_model.meta_graphs[0]


def _signature_def(saved_model_dir, signature_name):
    signatures = read_meta_graph(saved_model_dir).signature_def
    if signature_name not in signatures:
        available = sorted(name for name in signatures if not name.startswith("__"))
        raise SavedModelError(
            f"The SavedModel at {saved_model_dir} has no signature {signature_name!r}; "
            f"it has {available or 'none'}. TF Serving answers requests without a "
            f"signature_name with {SERVING_SIGNATURE!r}.",
            missing_signature=True,
        )
    return signatures[signature_name]


def _tensor_specs(tensor_infos):
    import tensorflow as tf

    specs = {}
    for name, info in sorted(tensor_infos.items()):
        shape = (
            None
            if info.tensor_shape.unknown_rank
            else tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim)
        )
        specs[name] = (np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype), shape)
    return specs


def signature_specs(saved_model_dir, signature_name=SERVING_SIGNATURE):
    """({input name: (numpy dtype, shape)}, {output name: (dtype, shape)}); None = any size."""
    signature = _signature_def(saved_model_dir, signature_name)
    return _tensor_specs(signature.inputs), _tensor_specs(signature.outputs)


def example_inputs(input_specs, batch_size=2):
    """Zeros that fit `input_specs` (unknown sizes become `batch_size`): a smoke input
    that is valid for every servable here (for a TF-Agents policy, step_type 0 = FIRST)."""
    inputs = {}
    for name, (dtype, shape) in input_specs.items():
        if shape is None:
            raise ValueError(f"Input {name!r} has unknown rank; pass example inputs.")
        shape = tuple(batch_size if size is None else size for size in shape)
        inputs[name] = np.zeros(shape, dtype=object if dtype == np.object_ else dtype)
        if dtype == np.object_:
            inputs[name][...] = b""
    return inputs
