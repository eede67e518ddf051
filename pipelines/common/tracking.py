"""MLflow tracking shared by every pipeline: where runs go, configs, curves, resume.

Runs go to MLFLOW_TRACKING_URI when it is set (or to `tracking_uri`), and otherwise to a
local SQLite store, `./mlflow.db`, that needs no server (`mlflow ui --backend-store-uri
sqlite:///mlflow.db` shows it). A run that resumes from a checkpoint directory continues
the MLflow run it started, so an interrupted run stays one run in the UI.
"""

import contextlib
import dataclasses
import json
import os
import pathlib

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_ID_FILE = "mlflow_run_id.txt"


def resolve_tracking_uri(tracking_uri=None):
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def config_to_dict(config):
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def flatten(mapping, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; MLflow params are flat."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def use_experiment(name):
    """Make `name` the active experiment, creating it if needed.

    With a SQLite store, MLflow's default artifact root is `./mlruns` under whatever
    directory the process runs in; a new experiment instead keeps its artifacts in
    `mlartifacts/` beside the database, so a store is one self-contained folder.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        database = pathlib.Path(uri[len("sqlite:///"):]).resolve()
        location = (database.parent / "mlartifacts" / name).as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by a concurrent run
    return mlflow.set_experiment(name)


@contextlib.contextmanager
def tracked_run(experiment, config, run_dir=None, tracking_uri=None, run_name=None):
    """Start (or, when `run_dir` holds one, resume) an MLflow run and log the config.

    Logs every config field as a param and the whole config as `config.json`.
    Yields the active `mlflow.ActiveRun`.
    """
    import mlflow

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    # Under `mlflow run`, MLflow has already made the run (MLFLOW_RUN_ID) in the experiment
    # the user chose; start_run picks it up, and would refuse it after set_experiment.
    if not os.environ.get("MLFLOW_RUN_ID"):
        use_experiment(experiment)
    run_id = None
    id_file = pathlib.Path(run_dir) / RUN_ID_FILE if run_dir else None
    if id_file is not None and id_file.exists():
        run_id = id_file.read_text().strip()
    with mlflow.start_run(run_id=run_id, run_name=run_name) as run:
        if id_file is not None:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run.info.run_id)
        config_dict = config_to_dict(config)
        if run_id is None:
            params = {k: str(v)[:500] for k, v in flatten(config_dict).items()}
            # Under `mlflow run` the run already holds the entry point's parameters as
            # typed ("1e-3", "--era"); MLflow refuses to change a param, so those stay.
            mlflow.log_params({k: v for k, v in params.items() if k not in run.data.params})
            mlflow.log_dict(config_dict, "config.json")
        yield run


def log_curves(curves, artifact_file, title=None, xlabel="step"):
    """Plot named series on shared x values and log the figure to the active run.

    curves: {"series name": (xs, ys)}; series whose names share a prefix before "/"
    go on one panel (e.g. "loss/train" and "loss/val").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    panels = {}
    for name, series in curves.items():
        panels.setdefault(name.split("/")[0], []).append((name, series))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False
    )
    for ax, (panel, members) in zip(axes[0], panels.items()):
        for name, (xs, ys) in members:
            ax.plot(xs, ys, label=name)
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(members) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def write_json(path, payload):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
