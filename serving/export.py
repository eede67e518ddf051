"""Export a trained run's SavedModel into TF Serving's layout, and check it loads alone.

    python -m serving.export --run-id <mlflow run id> --model-name image --export-base exports
    python -m serving.export --path runs/image/saved_model --model-name image

writes `<export-base>/<model-name>/<version>/` (the next free version unless --version),
refreshes `<export-base>/models.config`, then runs the copy's serving_default on zeros the
way TF Serving does (`serving.signature_runner`), in a process that cannot import
era_keras, Keras, keras-hub, TF-Agents or this repository. `--log-mlflow-model` also logs
it as an MLflow model that `mlflow models serve` can serve.
"""

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

from serving.layout import check_model_name, version_dir, write_models_config
from serving.saved_model import (
    SAVED_MODEL_FILE,
    SERVING_SIGNATURE,
    example_inputs,
    find_saved_models,
    is_saved_model,
    signature_specs,
)
from serving.signature_runner import predict_standalone


def _one_saved_model(root, where):
    found = find_saved_models(root)
    if not found:
        raise FileNotFoundError(f"No SavedModel ({SAVED_MODEL_FILE}) in {where}.")
    if len(found) > 1:
        relative = [str(path.relative_to(root)) for path in found]
        raise ValueError(
            f"{where} holds {len(found)} SavedModels: {relative}; choose one with "
            "--artifact-path (for a run) or a more precise --path."
        )
    return found[0]


def _saved_model_artifact_paths(client, run_id, path=None):
    """Artifact paths (in the run) of every directory that holds a saved_model.pb."""
    found = []
    for entry in client.list_artifacts(run_id, path):
        if entry.is_dir:
            found.extend(_saved_model_artifact_paths(client, run_id, entry.path))
        elif entry.path.rsplit("/", 1)[-1] == SAVED_MODEL_FILE:
            found.append(entry.path.rsplit("/", 1)[0] if "/" in entry.path else "")
    return found


def _saved_models_named_by_tags(run):
    """(local dir, tag) for run tags that name an existing local SavedModel directory:
    a pipeline that exports next to its run dir without logging the SavedModel as an
    artifact records where it went in a tag (GRPO: `export.savedmodel_dir`)."""
    found = []
    for tag, value in sorted(run.data.tags.items()):
        if tag.startswith("mlflow.") or "/" not in value:
            continue
        path = pathlib.Path(value)
        if is_saved_model(path) and path.resolve() not in [p.resolve() for p, _ in found]:
            found.append((path, f"tag {tag}"))
    return found


def download_run_saved_model(run_id, dst_dir, artifact_path=None, tracking_uri=None):
    """The run's SavedModel, downloaded: the artifact `artifact_path`, else the run's only
    SavedModel artifact, else the one local SavedModel directory a run tag names.
    Returns (local directory, where it came from)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.common.tracking import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ValueError(f"No MLflow run {run_id!r} in the store {tracking_uri}.") from error
    if artifact_path is None:
        candidates = _saved_model_artifact_paths(client, run_id)
        if not candidates:
            tagged = _saved_models_named_by_tags(run)
            if len(tagged) == 1:
                return tagged[0]
        if len(candidates) != 1:
            raise ValueError(
                f"Run {run_id} has {len(candidates)} SavedModel artifacts "
                f"({candidates or 'none'}); "
                + ("pass --artifact-path to choose one." if candidates else
                   "did the pipeline finish and export its model? (or pass its directory "
                   "with --path)")
            )
        artifact_path = candidates[0]
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=artifact_path or None, dst_path=str(dst_dir),
        tracking_uri=tracking_uri,
    )
    if not is_saved_model(local):
        raise FileNotFoundError(
            f"Artifact {artifact_path!r} of run {run_id} is not a SavedModel directory "
            f"(no {SAVED_MODEL_FILE})."
        )
    return pathlib.Path(local), f"artifact {artifact_path!r}"


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
                     signature_name=SERVING_SIGNATURE):
    """Copy a SavedModel to `<export_base>/<model_name>/<version>` and update models.config.

    A SavedModel without serving_default is re-saved with `signature_name` as its
    serving_default. The copy is written under a hidden temporary name and renamed into
    place, so TF Serving (which polls the model directory) never sees a half-written
    version.
    """
    target = version_dir(export_base, model_name, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; TF Serving may run as another user
    try:
        if _has_signature(saved_model_dir, SERVING_SIGNATURE):
            shutil.copytree(saved_model_dir, staging, dirs_exist_ok=True)
        else:
            save_with_serving_default(saved_model_dir, staging, signature_name)
        if target.exists():
            target.rmdir()  # version_dir guarantees it is empty
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    config = write_models_config(export_base)
    return target, config


def _has_signature(saved_model_dir, signature_name):
    try:
        signature_specs(saved_model_dir, signature_name)
    except ValueError:
        return False
    return True


def check_loads_standalone(saved_model_dir, signature_name=SERVING_SIGNATURE):
    """Run the signature on zeros as TF Serving would, in a process without the project's
    code, Keras, TF-Agents or tfp; returns its outputs."""
    input_specs, _ = signature_specs(saved_model_dir, signature_name)
    return predict_standalone(saved_model_dir, example_inputs(input_specs), signature_name)


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


def export(
    model_name,
    run_id=None,
    path=None,
    export_base="exports",
    version=None,
    artifact_path=None,
    signature_name=SERVING_SIGNATURE,
    check=True,
    log_mlflow_model=False,
    tracking_uri=None,
):
    """Export one SavedModel (from an MLflow run or a local path); returns a summary dict."""
    check_model_name(model_name)
    if (run_id is None) == (path is None):
        raise ValueError("Give exactly one source: an MLflow run id or a local path.")
    with tempfile.TemporaryDirectory(prefix="export-") as download_dir:
        if run_id is not None:
            source, origin = download_run_saved_model(
                run_id, download_dir, artifact_path, tracking_uri
            )
            origin = f"run {run_id}, {origin or 'artifact root'}"
        else:
            if not pathlib.Path(path).exists():
                raise FileNotFoundError(f"--path {path} does not exist.")
            source = _one_saved_model(pathlib.Path(path), f"--path {path}")
            origin = str(source)
        signature_specs(source, signature_name)  # fails early, naming the signatures there
        target, config = copy_into_layout(source, export_base, model_name, version,
                                          signature_name)
    summary = {"version_dir": target, "models_config": config, "source": origin}
    if check:
        outputs = check_loads_standalone(target, SERVING_SIGNATURE)
        summary["standalone_outputs"] = {name: value.shape for name, value in outputs.items()}
    if log_mlflow_model:
        summary["mlflow_model_uri"] = _log_mlflow_model(
            target, SERVING_SIGNATURE, run_id, tracking_uri
        )
    return summary


def _log_mlflow_model(saved_model_dir, signature_name, run_id, tracking_uri):
    import mlflow

    from pipelines.common.tracking import resolve_tracking_uri, use_experiment
    from serving.mlflow_model import log_saved_model

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    if run_id is None:
        use_experiment("serving")
    with mlflow.start_run(run_id=run_id):
        return log_saved_model(saved_model_dir, signature_name=signature_name).model_uri


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m serving.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", help="MLflow run whose SavedModel artifact to export")
    source.add_argument("--path", help="a SavedModel directory (or a directory holding one)")
    parser.add_argument("--model-name", required=True, help="TF Serving model name")
    parser.add_argument("--export-base", default="exports", help="TF Serving base directory")
    parser.add_argument(
        "--version", type=int, default=None, help="version number; None: the next free one"
    )
    parser.add_argument(
        "--artifact-path",
        default=None,
        help="the SavedModel's artifact path in the run; None: the run's only one",
    )
    parser.add_argument(
        "--signature-name",
        default=SERVING_SIGNATURE,
        help="the signature to serve; a SavedModel without serving_default is re-saved "
        "with this one as serving_default (e.g. `action` for a TF-Agents policy)",
    )
    parser.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip loading the export in a process without the project's code",
    )
    parser.add_argument(
        "--log-mlflow-model",
        action="store_true",
        help="also log it as an MLflow model for `mlflow models serve` (into the run "
        "for --run-id, else into a new run of experiment 'serving')",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store; None: $MLFLOW_TRACKING_URI "
        "or sqlite:///mlflow.db"
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        summary = export(
            args.model_name,
            run_id=args.run_id,
            path=args.path,
            export_base=args.export_base,
            version=args.version,
            artifact_path=args.artifact_path,
            signature_name=args.signature_name,
            check=args.check,
            log_mlflow_model=args.log_mlflow_model,
            tracking_uri=args.tracking_uri,
        )
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {summary['source']} -> {summary['version_dir']}")
    print(f"models.config: {summary['models_config']}")
    if "standalone_outputs" in summary:
        print(f"loads and runs without project code; outputs: {summary['standalone_outputs']}")
    if "mlflow_model_uri" in summary:
        print(f"MLflow model: {summary['mlflow_model_uri']}  (serve: mlflow models serve -m "
              f"{summary['mlflow_model_uri']} -h 127.0.0.1 -p 5000 --env-manager local)")
    print(serving_commands(args.export_base, args.model_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
