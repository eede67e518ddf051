"""MLflow tracking shared by every pipeline: where runs go, configs, curves, resume.

Runs go to MLFLOW_TRACKING_URI when it is set (or to `tracking_uri`), and otherwise to a
local SQLite store, `./mlflow.db`, that needs no server (`mlflow ui --backend-store-uri
sqlite:///mlflow.db` shows it). A run that resumes from a checkpoint directory continues
the MLflow run it started, so an interrupted run stays one run in the UI; if that MLflow
run was deleted meanwhile, the checkpoints continue into a new run, and the pipeline says so.

The store is checked before a run dir is claimed (`check_store`: seconds, not MLflow's
minutes of retries), and a store that fails during a run stops it with one line
(`store_failures`), the checkpoints kept for a resume. `MetricLog` logs each metric once
per step, however often a run was killed and resumed.
"""

import contextlib
import dataclasses
import os
import pathlib
import socket
import sqlite3
import sys
import urllib.parse
import urllib.request

from pipelines.common.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_ID_FILE = "mlflow_run_id.txt"
CHECK_TIMEOUT_S = 5
# MLflow retries a failing HTTP store 7 times with exponential back-off (minutes); a run
# that stops here resumes from its checkpoint, so fail soon, after a few retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def resolve_tracking_uri(tracking_uri=None):
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_store(tracking_uri=None, must_exist=False):
    """Raise UserError, within seconds, when the tracking store cannot be used.

    An HTTP store must answer (MLflow's `/health`); a SQLite store must be a readable
    database or a new file in a writable directory (`must_exist`: it must be there already,
    as for a reader, or a run whose store was deleted); a local file store's directory must
    be writable. Other schemes (databricks, ...) are left to MLflow.
    """
    uri = resolve_tracking_uri(tracking_uri)
    parsed = urllib.parse.urlparse(uri)
    problem = None
    if parsed.scheme in ("http", "https"):
        problem = _http_problem(uri, parsed)
    elif parsed.scheme == "sqlite":
        problem = _sqlite_problem(uri[len("sqlite:///"):], must_exist)
    elif parsed.scheme in ("", "file"):
        problem = _directory_problem(pathlib.Path(parsed.path or uri), must_exist)
    if problem:
        raise UserError(f"the MLflow tracking store {uri} {problem}; give a working "
                        "--tracking-uri (or MLFLOW_TRACKING_URI)")


def _http_problem(uri, parsed):
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=CHECK_TIMEOUT_S).close()
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CHECK_TIMEOUT_S):
            return None
    except OSError as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        return f"cannot be reached ({reason})"


def _sqlite_problem(path, must_exist):
    database = pathlib.Path(path)
    if not database.exists():
        if must_exist:
            return "does not exist (the database file is missing)"
        return _directory_problem(database.parent, must_exist=True)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=rw", uri=True)) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as error:
        return f"is not a usable SQLite database ({error})"
    return None


def _directory_problem(directory, must_exist):
    directory = directory.resolve()
    while not directory.exists() and not must_exist and directory != directory.parent:
        directory = directory.parent
    if not directory.exists():
        return f"cannot be used (the directory {directory} does not exist)"
    if not directory.is_dir():
        return f"cannot be used ({directory} is not a directory)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot be written ({directory} is read-only)"
    return None


def _store_error_types():
    import mlflow

    kinds = [mlflow.exceptions.MlflowException, sqlite3.Error, OSError]
    with contextlib.suppress(ImportError):
        import sqlalchemy

        kinds.append(sqlalchemy.exc.SQLAlchemyError)
    with contextlib.suppress(ImportError):
        import requests

        kinds.append(requests.exceptions.RequestException)
    return tuple(kinds)


@contextlib.contextmanager
def store_failures(tracking_uri, run_dir):
    """Turn a tracking store that failed mid-run into one UserError line.

    Only when the store itself no longer passes `check_store`; any other error (a bug)
    keeps its traceback. The run's checkpoints stay in `run_dir`, so rerunning resumes.
    """
    try:
        yield
    except _store_error_types() as error:
        try:
            check_store(tracking_uri, must_exist=True)
        except UserError as store_error:
            raise UserError(
                f"{store_error} (it failed during the run: {type(error).__name__}); the "
                f"checkpoints are kept in {run_dir}: rerun the same command once the store "
                "works again to resume") from None
        raise


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
    run_id = lost_run_id = None
    id_file = pathlib.Path(run_dir) / RUN_ID_FILE if run_dir else None
    if id_file is not None and id_file.exists():
        run_id = id_file.read_text().strip()
        if not os.environ.get("MLFLOW_RUN_ID") and not _run_exists(run_id):
            print(f"warning: the MLflow run {run_id} of {run_dir} no longer exists in "
                  f"{mlflow.get_tracking_uri()}; its checkpoints continue into a new run.",
                  file=sys.stderr, flush=True)
            run_id, lost_run_id = None, run_id
    with mlflow.start_run(run_id=run_id, run_name=run_name) as run:
        if id_file is not None:
            from pipelines.common.run_dir import write_text_atomic

            write_text_atomic(id_file, run.info.run_id)
        if lost_run_id:
            mlflow.set_tag("continues_lost_run", lost_run_id)
        config_dict = config_to_dict(config)
        if run_id is None:
            params = {k: str(v)[:500] for k, v in flatten(config_dict).items()}
            # Under `mlflow run` the run already holds the entry point's parameters as
            # typed ("1e-3", "--era"); MLflow refuses to change a param, so those stay.
            mlflow.log_params({k: v for k, v in params.items() if k not in run.data.params})
            mlflow.log_dict(config_dict, "config.json")
        yield run


def _run_exists(run_id):
    import mlflow

    try:
        return mlflow.tracking.MlflowClient().get_run(run_id).info.lifecycle_stage != "deleted"
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


class MetricLog:
    """Logs each metric at most once per step to the active run.

    A run killed after logging step 800 but before checkpointing it trains steps 600-800
    again on resume; what MLflow already holds for a (metric, step) stays as logged, so
    `get_metric_history` has one value per step after any number of kills.
    """

    def __init__(self, run_id=None, resumed=False):
        import mlflow

        self.run_id = run_id or mlflow.active_run().info.run_id
        self.last_step = {}
        if resumed:
            client = mlflow.tracking.MlflowClient()
            for key in client.get_run(self.run_id).data.metrics:
                steps = [m.step for m in client.get_metric_history(self.run_id, key)]
                self.last_step[key] = max(steps, default=-1)

    def log(self, metrics, step):
        """Log `metrics` ({name: value}) at `step`, leaving out what is already there."""
        import mlflow

        new = {key: value for key, value in metrics.items()
               if value is not None and step > self.last_step.get(key, -1)}
        if new:
            mlflow.log_metrics(new, step=step)
            self.last_step.update(dict.fromkeys(new, step))
        return new


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
