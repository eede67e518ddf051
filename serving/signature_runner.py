"""Run a SavedModel signature the way TF Serving does, in this process or in a clean one.

TF Serving loads the MetaGraphDef tagged "serve", restores its variables into a session
and runs a signature's tensors by name; no Python object of the model is rebuilt.
`SignatureRunner` does the same with `tf.compat.v1.saved_model.load`. `run_standalone`
(several requests) and `predict_standalone` (one) run it in a fresh process where
era_keras, Keras, keras-hub, TF-Agents, TensorFlow Probability and this repository cannot
be imported, so it proves that the math (ERA's included) and the request checks are in
the graph. `loader="object"` uses TF2's `tf.saved_model.load` instead,
which rebuilds the object graph; for a TF-Agents policy that needs
`preload=("tensorflow_probability",)`, whose TypeSpecs the policy's signatures name
(tfp imports Keras, so Keras is then importable too).

This file is also a script (the standalone process runs it), so at module level it
imports nothing but the standard library and numpy.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

SERVE_TAG = "serve"
# tensorflow_text is blocked too: stock TF Serving has none of its ops (SentencepieceOp).
PROJECT_MODULES = ("era_keras", "keras_hub", "tf_agents", "pipelines", "serving",
                   "tensorflow_text")
FRAMEWORK_MODULES = ("keras", "tf_keras", "tensorflow_probability")
LOADERS = ("session", "object")


class StandaloneLoadError(RuntimeError):
    """A SavedModel did not load and run in a process without the project's code.

    The message holds the loader's stderr; `summary` is one line (its last error line).
    """

    def __init__(self, message, summary):
        super().__init__(message)
        self.summary = summary


class InputSpecError(ValueError):
    """A request whose inputs do not fit the signature; the message names the expected spec."""


def describe_spec(dtype, shape):
    """"uint8 [-1, 28, 28, 1]" (-1: any size; "any shape" when the rank is unknown)."""
    if shape is None:
        return f"{np.dtype(dtype).name} of any shape"
    return f"{np.dtype(dtype).name} [{', '.join('-1' if d is None else str(d) for d in shape)}]"


def _fits_dtype(value, dtype):
    """Whether `value` (an array) converts to `dtype` without changing what it says:
    ints into float inputs, ints that fit into int inputs, text into string inputs;
    never floats into int inputs, text into numbers or numbers into text."""
    dtype = np.dtype(dtype)
    kind = value.dtype.kind
    if dtype.kind in "iu":
        if kind not in "iu":
            return False
        if value.size == 0:
            return True
        limits = np.iinfo(dtype)
        return bool(value.min() >= limits.min and value.max() <= limits.max)
    if dtype.kind == "f":
        return kind in "iuf"
    if dtype.kind == "b":
        return kind == "b"
    if dtype.kind in "SUO":  # tf.string
        text = kind == "O" and all(isinstance(v, (bytes, str)) for v in value.flat)
        return kind in "SU" or text
    return kind == dtype.kind


def check_inputs(inputs, specs):
    """{name: array} checked against {name: (dtype, shape)}; returns arrays of the spec's
    dtypes, or raises InputSpecError naming every input that does not fit and its spec."""
    missing = sorted(set(specs) - set(inputs))
    extra = sorted(set(inputs) - set(specs))
    if missing or extra:
        raise InputSpecError(
            f"inputs must be exactly {sorted(specs)}; missing {missing}, unknown {extra}. "
            "Expected: " + "; ".join(f"{n}: {describe_spec(*specs[n])}" for n in sorted(specs))
        )
    checked, problems = {}, []
    for name in sorted(specs):
        dtype, shape = specs[name]
        value = np.asarray(inputs[name])
        rank_ok = shape is None or value.ndim == len(shape)
        dims_ok = rank_ok and (shape is None or all(
            want is None or want == got for want, got in zip(shape, value.shape)))
        if not (dims_ok and _fits_dtype(value, dtype)):
            problems.append(
                f"input {name!r} must be {describe_spec(dtype, shape)}, got "
                f"{value.dtype.name} {list(value.shape)}"
            )
            continue
        checked[name] = value.astype(object if np.dtype(dtype).kind in "SUO" else dtype, copy=False)
    if problems:
        raise InputSpecError("; ".join(problems) + " (-1: any size)")
    return checked


class SignatureRunner:
    """`runner({input name: array})` -> {output name: array}, as TF Serving computes it.

    Inputs are checked against the signature first (names, rank, sizes, and a dtype that
    holds the values unchanged): a request that does not fit raises InputSpecError naming
    the expected spec, instead of being cast or reshaped into something else.
    """

    def __init__(self, saved_model_dir, signature_name="serving_default"):
        import tensorflow as tf

        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        with self._graph.as_default():
            meta_graph = tf.compat.v1.saved_model.load(
                self._session, [SERVE_TAG], str(saved_model_dir)
            )
        signatures = meta_graph.signature_def
        if signature_name not in signatures:
            available = sorted(name for name in signatures if not name.startswith("__"))
            raise ValueError(
                f"The SavedModel at {saved_model_dir} has no signature {signature_name!r}; "
                f"it has {available}."
            )
        signature = signatures[signature_name]
        self.input_tensors = {name: info.name for name, info in signature.inputs.items()}
        self.input_specs = {
            name: (
                np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype),
                None if info.tensor_shape.unknown_rank
                else tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim),
            )
            for name, info in signature.inputs.items()
        }
        self.output_tensors = {name: info.name for name, info in signature.outputs.items()}

    def __call__(self, inputs):
        checked = check_inputs(inputs, self.input_specs)
        feeds = {self.input_tensors[name]: value for name, value in checked.items()}
        return self._session.run(self.output_tensors, feeds)


def refusal_message(error):
    """The reason a graph gave for refusing a request (an InvalidArgumentError from one of
    its checks), in one line: without the "Graph execution error", node and stack notes
    TensorFlow puts around it."""
    message = getattr(error, "message", None) or str(error)
    message = message.split("\n\t [[", 1)[0].split("\n\nOriginal stack trace", 1)[0]
    noise = ("Graph execution error:", "Detected at node", "<stack traces unavailable>")
    lines = [line.strip() for line in message.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(noise))


class Refused:
    """A request the servable refused: `kind` "InputSpecError" (it does not fit the
    signature) or "InvalidArgumentError" (the graph's own checks), and the reason."""

    def __init__(self, kind, message):
        self.kind = kind
        self.message = message

    def __repr__(self):
        return f"Refused({self.kind}: {self.message})"


def _signature_caller(saved_model_dir, loader):
    """inputs -> outputs with one loader ("session": as TF Serving; "object": TF2's
    `tf.saved_model.load`), loading the SavedModel once per signature."""
    import tensorflow as tf

    if loader == "session":
        runners = {}

        def call(signature, inputs):
            if signature not in runners:
                runners[signature] = SignatureRunner(saved_model_dir, signature)
            return runners[signature](inputs)

        return call
    loaded = tf.saved_model.load(str(saved_model_dir))

    def call(signature, inputs):
        outputs = loaded.signatures[signature](
            **{name: tf.constant(value) for name, value in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    return call


def _clean_environment():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_standalone(saved_model_dir, requests, loader="session", preload=(), timeout=600):
    """Each request [(signature name, {input name: array}), ...] run in one fresh process
    that cannot import this project (nor Keras, TF-Agents, tfp unless preloaded).

    Returns one entry per request: its outputs {name: array}, or `Refused` when the
    servable refused it. A SavedModel that does not load, or a signature that fails
    otherwise, raises StandaloneLoadError.
    """
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}.")
    saved_model_dir = str(pathlib.Path(saved_model_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="standalone-") as workdir:
        work = pathlib.Path(workdir)
        signatures = []
        for i, (signature, inputs) in enumerate(requests):
            np.savez(work / f"inputs_{i}.npz", **{n: np.asarray(v) for n, v in inputs.items()})
            signatures.append(signature)
        (work / "requests.json").write_text(json.dumps(signatures))
        command = [sys.executable, str(pathlib.Path(__file__).resolve()), saved_model_dir,
                   workdir, "--loader", loader]
        for module in preload:
            command += ["--preload", module]
        result = subprocess.run(
            command, cwd=workdir, capture_output=True, text=True, timeout=timeout,
            env=_clean_environment(),
        )
        if result.returncode != 0:
            what = (f"The SavedModel at {saved_model_dir} did not load and run without the "
                    f"project's Python code ({loader} loader)")
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise StandaloneLoadError(
                f"{what}:\n{result.stderr[-3000:]}",
                f"{what}: {lines[-1].strip() if lines else 'exit code ' + str(result.returncode)}",
            )
        results = []
        for i in range(len(signatures)):
            refused = work / f"refused_{i}.json"
            if refused.exists():
                results.append(Refused(**json.loads(refused.read_text())))
                continue
            with np.load(work / f"outputs_{i}.npz", allow_pickle=False) as outputs:
                results.append({name: outputs[name] for name in outputs.files})
        return results


def predict_standalone(
    saved_model_dir,
    inputs,
    signature_name="serving_default",
    loader="session",
    preload=(),
    timeout=600,
):
    """Outputs {name: array} of a signature on `inputs` {name: array}, computed in a fresh
    process that cannot import this project (nor Keras, TF-Agents, tfp unless preloaded).
    A refused request raises StandaloneLoadError too, naming the reason.
    """
    (result,) = run_standalone(saved_model_dir, [(signature_name, inputs)], loader, preload,
                               timeout)
    if isinstance(result, Refused):
        what = (f"The SavedModel at {saved_model_dir} refused the request to "
                f"{signature_name!r} ({loader} loader), {result.kind}: {result.message}")
        raise StandaloneLoadError(what, what)
    return result


def _main():
    parser = argparse.ArgumentParser(
        description="Run SavedModel signatures on .npz inputs (workdir/inputs_<i>.npz, the "
        "signature names in workdir/requests.json) into workdir/outputs_<i>.npz, or "
        "workdir/refused_<i>.json for a refused request.")
    parser.add_argument("saved_model_dir")
    parser.add_argument("workdir")
    parser.add_argument("--loader", choices=LOADERS, default="session")
    parser.add_argument("--preload", action="append", default=[])
    args = parser.parse_args()
    blocked = PROJECT_MODULES + (() if args.preload else FRAMEWORK_MODULES)
    for name in blocked:
        sys.modules[name] = None  # importing it now raises ImportError
    # Running this file puts serving/ itself first on sys.path; take it off.
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve()
                   != pathlib.Path(__file__).resolve().parent]
    for name in args.preload:
        __import__(name)
    import tensorflow as tf

    work = pathlib.Path(args.workdir)
    call = _signature_caller(args.saved_model_dir, args.loader)
    for i, signature in enumerate(json.loads((work / "requests.json").read_text())):
        with np.load(work / f"inputs_{i}.npz") as data:
            inputs = {name: data[name] for name in data.files}
        try:
            outputs = call(signature, inputs)
        except InputSpecError as error:
            refused = {"kind": "InputSpecError", "message": str(error)}
        except tf.errors.InvalidArgumentError as error:
            refused = {"kind": "InvalidArgumentError", "message": refusal_message(error)}
        else:
            np.savez(work / f"outputs_{i}.npz", **outputs)
            continue
        (work / f"refused_{i}.json").write_text(json.dumps(refused))


if __name__ == "__main__":
    _main()
