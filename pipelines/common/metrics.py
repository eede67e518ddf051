"""One metric naming scheme and one reader of metric history, for every pipeline.

Names are `<group>/<name>`: `train/` (training losses and rewards), `eval/` (held-out
evaluation), `entropy/` (what ERA controls: entropies, targets, the share of outputs it
acted on) and `perf/` (throughput and timings). MLflow's UI groups metrics by that prefix.
"""

GROUPS = ("train", "eval", "entropy", "perf")


def metric_name(group, name):
    if group not in GROUPS:
        raise ValueError(f"metric group {group!r} is not one of {GROUPS}")
    return f"{group}/{name}"


def grouped(group, values):
    """{"loss": 1.0} -> {"train/loss": 1.0}, dropping values that are None."""
    return {
        metric_name(group, key): float(value)
        for key, value in values.items()
        if value is not None
    }


def metric_history(run_id, keys=None, client=None):
    """{key: (steps, values)} of a run's logged metrics, in logging order.

    `keys` defaults to every metric of the run. A resumed run may log a step twice (once
    before the kill, once after); the later value wins.
    """
    import mlflow

    client = client or mlflow.tracking.MlflowClient()
    if keys is None:
        keys = sorted(client.get_run(run_id).data.metrics)
    history = {}
    for key in keys:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
        by_step = {}
        for point in points:
            by_step[point.step] = point.value
        steps = sorted(by_step)
        history[key] = (steps, [by_step[s] for s in steps])
    return history
