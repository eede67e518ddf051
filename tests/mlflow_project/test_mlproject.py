import os
import pathlib
import shlex
import subprocess
import sys

import mlflow
import pytest
import tomllib
from mlflow.projects._project_spec import load_project
from mlflow.utils.environment import _PythonEnv

from pipelines.common.errors import UserError
from pipelines.common.tracking import tracked_run

REPO = pathlib.Path(__file__).resolve().parents[2]
PROJECT = REPO / "mlflow_project"
ENTRY_MODULES = {
    "image": "pipelines.image",
    "sac": "pipelines.sac",
    "grpo": "pipelines.grpo",
    "export": "pipelines.export",
}


def _module_parser(entry):
    """The argparse parser behind `python -m <module>` (no TensorFlow import needed)."""
    if entry == "image":
        from pipelines.image.__main__ import build_parser
    elif entry == "sac":
        from pipelines.sac.cli import build_parser
    elif entry == "grpo":
        from pipelines.grpo.__main__ import _parser as build_parser
    else:
        from pipelines.export import build_parser
    return build_parser()


@pytest.mark.parametrize("entry", sorted(ENTRY_MODULES))
def test_entry_point_command_parses_with_its_module_cli(entry):
    point = load_project(str(PROJECT)).get_entry_point(entry)
    for name, param in point.parameters.items():
        assert param.type in ("string", "float", "path", "uri"), (name, param.type)
    values = {name: param.default for name, param in point.parameters.items()
              if param.default is not None}
    if entry == "export":  # its required parameters
        values.update(run_id="0" * 32, model_name="digits")
    command = point.compute_command(values, storage_dir=None)
    prefix = "cd .. && "
    assert command.startswith(prefix)
    module_call = f"python -m {ENTRY_MODULES[entry]} "
    assert module_call in command
    words = shlex.split(command.split(module_call, 1)[1])
    try:
        _module_parser(entry).parse_args(words)  # unknown options, bad types, choices
    except SystemExit as error:
        pytest.fail(f"`{module_call}{' '.join(words)}` does not parse: exit {error.code}")


def _entry_words(entry, **values):
    point = load_project(str(PROJECT)).get_entry_point(entry)
    defaults = {name: param.default for name, param in point.parameters.items()
                if param.default is not None}
    command = point.compute_command({**defaults, **values}, storage_dir=None)
    return shlex.split(command.split(f"python -m {ENTRY_MODULES[entry]} ", 1)[1])


@pytest.mark.parametrize("entry, parameter, option", [
    ("sac", "total_env_steps", "total_env_steps"),
    ("image", "epochs", "epochs"),
    ("grpo", "steps", "steps"),
])
def test_an_integer_parameter_may_be_written_as_a_whole_float(entry, parameter, option,
                                                             capsys):
    """MLflow types integers as `float`, so `-P total_env_steps=1e3` must mean 1000; a
    fractional value is refused by the pipeline's CLI in one line."""
    for written in ("1e3", "1000.0", "1000"):
        args = _module_parser(entry).parse_args(_entry_words(entry, **{parameter: written}))
        value = getattr(args, option)
        assert value == 1000 and type(value) is int, (written, value)
    # argparse exits 2 with its one line; SAC's parser raises it as a UserError, which its
    # CLI prints the same way (exit 2).
    with pytest.raises((SystemExit, UserError)) as refused:
        _module_parser(entry).parse_args(_entry_words(entry, **{parameter: "2.5"}))
    flag = "--" + option.replace("_", "-")
    if isinstance(refused.value, SystemExit):
        assert refused.value.code == 2
        message = capsys.readouterr().err
    else:
        message = str(refused.value)
    assert f"argument {flag}: invalid int value: '2.5'" in message


def test_python_env_lists_what_the_pipelines_need():
    env = _PythonEnv.from_yaml(str(PROJECT / "python_env.yaml"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = set(pyproject["dependencies"])
    for extra in ("image", "sac", "grpo", "serving"):
        needed.update(pyproject["optional-dependencies"][extra])
    assert set(env.dependencies) - {"-c constraints.txt"} == needed
    assert (PROJECT / "constraints.txt").resolve() == REPO / "constraints.txt"


def test_tracked_run_logs_into_the_run_mlflow_run_made(tracking_uri, monkeypatch):
    mlflow.set_tracking_uri(tracking_uri)
    outer = mlflow.MlflowClient().create_run(
        mlflow.create_experiment("chosen by mlflow run")).info.run_id
    mlflow.MlflowClient().log_param(outer, "learning_rate", "1e-1")  # as `-P` typed it
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    with tracked_run("image", {"epochs": 1, "learning_rate": 0.1}) as run:
        mlflow.log_metric("loss", 0.5)
    assert run.info.run_id == outer
    params = mlflow.MlflowClient().get_run(outer).data.params
    assert params == {"epochs": "1", "learning_rate": "1e-1"}


@pytest.mark.slow
def test_mlflow_run_image_then_export_end_to_end(tmp_path, tracking_uri):
    """`mlflow run` of the image entry point with tiny settings, then of export on its run."""
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}")
    mlflow_cli = str(pathlib.Path(sys.executable).parent / "mlflow")

    def mlflow_run(*args):
        result = subprocess.run(
            [mlflow_cli, "run", str(PROJECT), "--env-manager", "local", *args],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return result

    mlflow_run(
        "-e", "image", "--experiment-name", "project",
        "-P", "dataset=sklearn_digits", "-P", "backbone=resnet8", "-P", "epochs=1",
        "-P", "batch_size=32", "-P", "learning_rate=1e-1", "-P", f"data-dir={tmp_path / 'tfds'}",
        "-P", f"run-dir={tmp_path / 'run'}", "-P", "steps-per-epoch=2",
        "-P", "width=4",
    )
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("project")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "image"
    assert "eval/test_top1" in run.data.metrics  # the pipeline logged into the project's run
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"saved_model"}

    mlflow_run(
        "-e", "export", "--experiment-name", "project",
        "-P", f"run_id={run.info.run_id}", "-P", "model_name=digits",
        "-P", f"export_base={tmp_path / 'exports'}",
    )
    assert (tmp_path / "exports" / "digits" / "1" / "saved_model.pb").is_file()
    assert "base_path" in (tmp_path / "exports" / "models.config").read_text()
    logged = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id], output_format="list")
    servables = [m.source_run_id for m in logged if m.name == "servable"]
    assert servables == [run.info.run_id]  # `mlflow models serve` can serve it now


def _sac_command_words(**parameters):
    point = load_project(str(PROJECT)).get_entry_point("sac")
    values = {name: param.default for name, param in point.parameters.items()}
    values.update(parameters)
    command = point.compute_command(values, storage_dir=None)
    return shlex.split(command.split("python -m pipelines.sac ", 1)[1])


def test_sac_takes_an_integral_float_parameter_and_refuses_others(capsys):
    from pipelines.common.errors import run_cli
    from pipelines.sac import cli

    words = _sac_command_words(total_env_steps="1e3")
    config = cli.config_from_args(cli.build_parser().parse_args(words))
    assert config.total_env_steps == 1000 and config.env == "Pendulum-v1"
    assert run_cli(cli.main, [*_sac_command_words(total_env_steps="2.5"), "--print-config"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--total-env-steps: invalid int value: '2.5'" in error


@pytest.mark.slow
def test_mlflow_run_sac_logs_into_the_experiment_it_names(tmp_path, tracking_uri):
    """`mlflow run -e sac` (no --experiment-name: MLflow's Default): the pipeline's metrics
    go into the run MLflow made, and the experiment the CLI names is that run's."""
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}")
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "mlflow"), "run", str(PROJECT),
         "--env-manager", "local", "-e", "sac", "-P", "total_env_steps=2e2",
         "-P", f"run_dir={tmp_path / 'run'}", "-P", "warmup-steps=100", "-P", "log-every=100",
         "-P", "eval-every=200", "-P", "eval-episodes=1", "-P", "checkpoint-every=200",
         "-P", "hidden-sizes=16", "-P", "batch-size=16"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert run.data.tags["mlflow.project.entryPoint"] == "sac"
    assert "eval/return" in run.data.metrics and run.data.params["total_env_steps"] == "2e2"
    assert "after 200 env steps; MLflow experiment 'Default'" in result.stdout
    assert client.get_experiment_by_name("sac") is None  # nothing logged elsewhere
