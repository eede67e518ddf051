"""One metric naming scheme and one reader of metric history."""

import mlflow
import pytest

from pipelines.common.metrics import grouped, metric_history, metric_name


def test_metric_names_carry_one_of_the_four_groups():
    assert metric_name("entropy", "executed") == "entropy/executed"
    assert grouped("train", {"loss": 1, "skipped": None}) == {"train/loss": 1.0}
    with pytest.raises(ValueError, match="not one of"):
        metric_name("losses", "x")


def test_history_is_read_per_step_and_a_relogged_step_keeps_its_later_value(tracking_uri):
    mlflow.set_experiment("metrics")
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        for step, value in [(0, 3.0), (1, 2.0), (2, 1.5)]:
            client.log_metric(run_id, "train/loss", value, timestamp=1000 + step, step=step)
        # A run killed after step 2 and resumed from a checkpoint at step 1 logs step 2 again.
        client.log_metric(run_id, "train/loss", 1.25, timestamp=2000, step=2)
        client.log_metric(run_id, "eval/accuracy", 0.5, timestamp=2000, step=2)
    history = metric_history(run.info.run_id)
    assert history == {
        "eval/accuracy": ([2], [0.5]),
        "train/loss": ([0, 1, 2], [3.0, 2.0, 1.25]),
    }
    assert metric_history(run.info.run_id, ["eval/accuracy"]) == {"eval/accuracy": ([2], [0.5])}
