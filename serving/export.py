"""Put a SavedModel into TF Serving's layout, and check that it loads without this project.

`export_saved_model(source, export_base, model_name)` copies one SavedModel to
`<export_base>/<model_name>/<version>/` (the next free version unless given), refreshes
`<export_base>/models.config`, after running the copy the way TF Serving does
(`serving.signature_runner`), in a process that cannot import era_keras, Keras,
keras-hub, TF-Agents or this repository: on its own warm-up requests (`serving.warmup`),
or else serving_default on zeros. A copy that fails this is removed, not exported.
Pipelines call `copy_into_layout` and `check_loads_standalone` for their own exports.

The command line, which can also find a SavedModel inside an MLflow run, lives with the
pipelines: `python -m pipelines.export --help`.
"""

import os
import pathlib
import shutil
import tempfile

from serving.layout import check_model_name, version_dir, write_models_config
from serving.saved_model import (
    SAVED_MODEL_FILE,
    SERVING_SIGNATURE,
    SavedModelError,
    example_inputs,
    find_saved_models,
    signature_specs,
)
from serving.signature_runner import Refused, StandaloneLoadError, run_standalone
from serving.warmup import read_warmup_requests


def find_one_saved_model(root):
    """The one SavedModel at or below `root`; a SavedModelError when there are none or several."""
    root = pathlib.Path(root)
    if not root.exists():
        raise SavedModelError(f"{root} does not exist.")
    found = find_saved_models(root)
    if not found:
        raise SavedModelError(f"No SavedModel ({SAVED_MODEL_FILE}) in {root}.")
    if len(found) > 1:
        relative = [str(path.relative_to(root)) for path in found]
        raise SavedModelError(
            f"{root} holds {len(found)} SavedModels: {relative}; point at one of them."
        )
    return found[0]


def _load_object_graph(saved_model_dir):
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(saved_model_dir))
    except ValueError as error:
        if "tfp." not in str(error):
            raise
        # TF-Agents policies' signatures name TensorFlow Probability TypeSpecs, which are
        # registered only once tfp is imported.
        import tensorflow_probability  # noqa: F401

        return tf.saved_model.load(str(saved_model_dir))


def save_with_serving_default(saved_model_dir, target_dir, signature_name):
    """Re-save a SavedModel with `signature_name` also as serving_default (TF Serving's
    default for requests that name no signature), keeping its other signatures and the
    files beside the graph (assets.extra, TF-Agents' policy_specs.pbtxt)."""
    import tensorflow as tf

    loaded = _load_object_graph(saved_model_dir)
    signatures = dict(loaded.signatures)
    signatures[SERVING_SIGNATURE] = signatures[signature_name]
    tf.saved_model.save(loaded, str(target_dir), signatures=signatures)
    written = {"saved_model.pb", "variables", "assets", "fingerprint.pb"}
    for item in pathlib.Path(saved_model_dir).iterdir():
        if item.name not in written:
            copy = shutil.copytree if item.is_dir() else shutil.copy2
            copy(item, pathlib.Path(target_dir) / item.name)


def copy_into_layout(saved_model_dir, export_base, model_name, version=None,
                     signature_name=SERVING_SIGNATURE, check=None):
    """Copy a SavedModel to `<export_base>/<model_name>/<version>` and update models.config.

    A SavedModel without serving_default is re-saved with `signature_name` as its
    serving_default. The copy is written under a hidden temporary name and renamed into
    place, so TF Serving (which polls the model directory) never sees a half-written
    version. `check`, when given, is called with the staged copy before the rename: if it
    raises, the export leaves nothing behind (no version, no directory it created, no
    models.config entry). Returns (version directory, models.config path).
    """
    target = version_dir(export_base, model_name, version)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; TF Serving may run as another user
    try:
        if _has_signature(saved_model_dir, SERVING_SIGNATURE):
            shutil.copytree(saved_model_dir, staging, dirs_exist_ok=True)
        else:
            save_with_serving_default(saved_model_dir, staging, signature_name)
        if check is not None:
            check(staging)
        if target.exists():
            target.rmdir()  # version_dir guarantees it is empty
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:  # innermost first
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        raise
    config = write_models_config(export_base)
    return target, config


def _has_signature(saved_model_dir, signature_name):
    try:
        signature_specs(saved_model_dir, signature_name)
    except SavedModelError as error:
        if error.missing_signature:
            return False
        raise
    return True


def check_requests(saved_model_dir, signature_name=SERVING_SIGNATURE):
    """What the load check runs: the SavedModel's own warm-up requests
    (`serving.warmup`), or else `signature_name` on zeros (valid for every servable here
    that ships no warm-up file)."""
    requests = read_warmup_requests(saved_model_dir)
    if requests:
        return requests
    input_specs, _ = signature_specs(saved_model_dir, signature_name)
    return [(signature_name, example_inputs(input_specs))]


def check_loads_standalone(saved_model_dir, signature_name=SERVING_SIGNATURE):
    """Load the SavedModel as TF Serving would, in a process without the project's code,
    Keras, TF-Agents or tfp, and run `check_requests` on it; returns the outputs of the
    first. Raises StandaloneLoadError when it does not load or a request fails."""
    requests = check_requests(saved_model_dir, signature_name)
    request = ("its own warm-up request" if read_warmup_requests(saved_model_dir)
               else "zeros (it has no warm-up requests, serving.warmup, to run instead)")
    outputs = []
    for (signature, _), result in zip(requests, run_standalone(saved_model_dir, requests)):
        if isinstance(result, Refused):
            what = (f"The SavedModel at {saved_model_dir} refused {request} to "
                    f"{signature!r}, {result.kind}: {result.message}")
            raise StandaloneLoadError(what, what)
        outputs.append(result)
    return outputs[0]


def export_saved_model(source_dir, export_base, model_name, version=None,
                       signature_name=SERVING_SIGNATURE, check=True):
    """Copy the SavedModel at (or below) `source_dir` into TF Serving's layout.

    Returns {"version_dir", "models_config", "standalone_outputs" (output shapes, when
    `check`)}. Raises SavedModelError for a missing, unreadable or ambiguous source or a
    missing signature, ValueError / FileExistsError for a bad name or version, and
    StandaloneLoadError when the copy does not run without the project's code; then
    nothing is exported.
    """
    check_model_name(model_name)
    source = find_one_saved_model(source_dir)
    signature_specs(source, signature_name)  # fails early, naming the signatures there
    checked = {}

    def check_copy(staged):
        try:
            checked.update(check_loads_standalone(staged, SERVING_SIGNATURE))
        except StandaloneLoadError as error:
            # Name the source: the staged copy is about to be removed.
            named = [text.replace(str(pathlib.Path(staged).resolve()), f"{source} (copied)")
                     .replace(str(staged), f"{source} (copied)")
                     for text in (str(error), error.summary)]
            raise StandaloneLoadError(*named) from None

    target, config = copy_into_layout(source, export_base, model_name, version, signature_name,
                                      check_copy if check else None)
    summary = {"version_dir": target, "models_config": config}
    if check:
        summary["standalone_outputs"] = {name: value.shape for name, value in checked.items()}
    return summary


def serving_commands(export_base, model_name):
    """The commands that serve an export with TF Serving, natively and in Docker."""
    base = pathlib.Path(export_base).resolve()
    return "\n".join(
        [
            "# TF Serving, one model (REST on 8501, gRPC on 8500):",
            f"tensorflow_model_server --rest_api_port=8501 --port=8500 "
            f"--model_name={model_name} --model_base_path={base / model_name}",
            "# every model in models.config:",
            f"tensorflow_model_server --rest_api_port=8501 --port=8500 "
            f"--model_config_file={base / 'models.config'}",
            "# Docker:",
            f"docker run --rm -p 8501:8501 -p 8500:8500 "
            f"-v {base / model_name}:/models/{model_name} -e MODEL_NAME={model_name} "
            "tensorflow/serving",
            "# Docker, every model (mounted at the same absolute path models.config names):",
            f"docker run --rm -p 8501:8501 -p 8500:8500 -v {base}:{base} tensorflow/serving "
            f"--model_config_file={base / 'models.config'}",
        ]
    )
