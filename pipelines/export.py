"""Export a trained run's SavedModel into TF Serving's layout, and check it loads alone.

    python -m pipelines.export --run-id <mlflow run id> --model-name digits --export-base exports
    python -m pipelines.export --path runs/sac/export/era_sac_policy/1 --model-name policy \\
        --signature-name action

finds the SavedModel (in an MLflow run: its one SavedModel artifact, or the local directory
a run tag names), writes `<export-base>/<model-name>/<version>/` (the next free version
unless --version) with `serving.export`, refreshes `<export-base>/models.config`, and runs
the copy's serving_default on zeros the way TF Serving does, in a process that cannot import
era_keras, Keras, keras-hub, TF-Agents or this repository. `--log-mlflow-model` also logs it
as an MLflow model that `mlflow models serve` can serve.

This sits beside the pipelines, not in `serving/`: it reads MLflow runs the pipelines
write, while `serving/` stays a library that knows nothing of them.
"""

import argparse
import pathlib
import sys
import tempfile

from pipelines.common.errors import UserError, run_cli
from pipelines.common.native_logs import import_tensorflow
from serving.export import export_saved_model, serving_commands
from serving.layout import check_model_name
from serving.saved_model import SAVED_MODEL_FILE, SERVING_SIGNATURE, SavedModelError, is_saved_model
from serving.signature_runner import StandaloneLoadError


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


def check_store_exists(tracking_uri=None):
    """Refuse a SQLite store that does not exist: MLflow would create an empty one there,
    and a mistyped path would then look like a store without the run."""
    from pipelines.common.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        database = pathlib.Path(uri[len("sqlite:///"):])
        if not database.is_file():
            raise UserError(
                f"no MLflow store at {database.resolve()} (tracking URI {uri}); check the "
                "path, or pass --tracking-uri (export never creates a store)"
            )


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
    except MlflowException:
        raise UserError(
            f"no MLflow run {run_id!r} in the store {tracking_uri}; check the id, or pass "
            "--tracking-uri for another store"
        ) from None
    if artifact_path is None:
        candidates = _saved_model_artifact_paths(client, run_id)
        if not candidates:
            tagged = _saved_models_named_by_tags(run)
            # GRPO tags two servables (scoring and generate); the scoring one is the default
            # (`--path <run-dir>/export/serving/<model>_generate/<v>` picks the other).
            default = [t for t in tagged if t[1] == "tag export.savedmodel_dir"]
            if len(tagged) == 1 or default:
                return (default or tagged)[0]
        if len(candidates) != 1:
            raise UserError(
                f"run {run_id} has {len(candidates)} SavedModel artifacts "
                f"({candidates or 'none'}); "
                + ("pass --artifact-path to choose one" if candidates else
                   "did the pipeline finish and export its model? (or pass its directory "
                   "with --path)")
            )
        artifact_path = candidates[0]
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path or None, dst_path=str(dst_dir),
            tracking_uri=tracking_uri,
        )
    except (MlflowException, OSError) as error:
        raise UserError(
            f"cannot download artifact {artifact_path!r} of run {run_id}: {error}"
        ) from None
    if not is_saved_model(local):
        raise UserError(
            f"artifact {artifact_path!r} of run {run_id} is not a SavedModel directory "
            f"(no {SAVED_MODEL_FILE}); pass the one that is with --artifact-path"
        )
    return pathlib.Path(local), f"artifact {artifact_path!r}"


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
    if (run_id is None) == (path is None):
        raise UserError("give exactly one source: an MLflow run id or a local path")
    if run_id is not None or log_mlflow_model:
        check_store_exists(tracking_uri)
    try:
        check_model_name(model_name)
        with tempfile.TemporaryDirectory(prefix="export-") as download_dir:
            if run_id is not None:
                source, origin = download_run_saved_model(
                    run_id, download_dir, artifact_path, tracking_uri
                )
                origin = f"run {run_id}, {origin}"
            else:
                source, origin = pathlib.Path(path), f"--path {path}"
            summary = export_saved_model(
                source, export_base, model_name, version, signature_name, check
            )
    except StandaloneLoadError as error:
        raise UserError(f"{error.summary}; nothing was exported") from None
    except (SavedModelError, ValueError, FileExistsError) as error:
        raise UserError(str(error)) from None
    summary["source"] = origin
    if log_mlflow_model:
        summary["mlflow_model_uri"] = _log_mlflow_model(
            summary["version_dir"], SERVING_SIGNATURE, run_id, tracking_uri
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
        prog="python -m pipelines.export",
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
    import_tensorflow()
    args = build_parser().parse_args(argv)
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
    print(f"exported {summary['source']} -> {summary['version_dir']}")
    print(f"models.config: {summary['models_config']}")
    if "standalone_outputs" in summary:
        print(f"loads and runs without project code; outputs: {summary['standalone_outputs']}")
    if "mlflow_model_uri" in summary:
        from serving.mlflow_model import serve_command

        print(f"MLflow model: {summary['mlflow_model_uri']}; serve it with:")
        print(serve_command(summary["mlflow_model_uri"]))
    print(serving_commands(args.export_base, args.model_name))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
