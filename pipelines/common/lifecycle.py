"""The life of one run, the same for every pipeline.

    check the config  ->  check the tracking store  ->  lock + claim the run dir
      ->  restore the newest readable checkpoint (the pipeline's `CheckpointRotation`)
      ->  open (or reopen) the MLflow run
      ->  the pipeline's own loop; log / eval / checkpoint on `IntervalTrigger`s,
          metrics through `log_metrics` (once per step, however often it was resumed)
      ->  export  ->  `finish`: finished.json, the run id and export paths printed

A pipeline writes only its algorithm and what it checkpoints:

    with RunLifecycle(config, experiment="sac", run_name=..., may_change=(...)) as run:
        run.start()                          # store checked, run dir locked and claimed
        restored = rotation.restore(read)    # None on a fresh run
        with run.tracking():                 # the MLflow run; a failing store: one line
            while step < total:
                ...
                run.log_metrics(metrics, step)
            exports = {...}
        return run.finish(step, exports, metrics)

Leaving the `with` releases the run dir's lock (so does the end of the process, however
it ends).

Under a multi-worker strategy only the chief (`chief=True`) checks, claims, tracks and
finishes; the other workers read the chief's checkpoints.
"""

import contextlib

from pipelines.common import tracking
from pipelines.common.run_dir import RunDir


def run_name(pipeline, *parts, seed):
    """The MLflow run name of every pipeline: "<pipeline> <what it trains ...> seed <n>",
    e.g. "sac HalfCheetah-v5 era-truncated seed 0"."""
    return " ".join([pipeline, *map(str, parts), f"seed {seed}"])


class IntervalTrigger:
    """Fires when a step counter passes a multiple of `every`, and at the last step.

    As TF-Agents' `train/triggers.py` does: a loop that advances in chunks (several env
    steps per call) still fires once per multiple it passed.
    """

    def __init__(self, every, last_step):
        self.every = every
        self.last_step = last_step

    def __call__(self, previous, step):
        """Whether going from step `previous` to `step` passed a multiple or the end."""
        return step // self.every > previous // self.every or (
            step >= self.last_step > previous)


class RunLifecycle:
    """One run of a pipeline (see the module docstring)."""

    def __init__(self, config, experiment, run_name, run_dir=None, tracking_uri=None,
                 may_change=(), chief=True, claimed=None):
        """`claimed`: what the run dir records as the run's settings (default: `config`)."""
        self.config = config
        self.experiment = experiment
        self.run_name = run_name
        self.run_dir = RunDir(run_dir if run_dir is not None else config.run_dir)
        self.tracking_uri = tracking_uri
        self.may_change = tuple(may_change)
        self.chief = chief
        self.claimed = config if claimed is None else claimed
        self.resumed = False
        self.run_id = None
        self._metrics = None
        self._store_checked = False

    def check_store(self):
        """Fail within seconds if the tracking store cannot be used (also done by `start`);
        call it first when building the run takes long."""
        if self.chief and not self._store_checked:
            tracking.check_store(self.tracking_uri)
            self._store_checked = True

    def start(self):
        """Check the store, lock and claim the run dir; returns whether it resumes a run."""
        if self.chief:
            self.check_store()
            self.run_dir.lock()
            try:
                self.resumed = self.run_dir.claim(self.claimed, may_change=self.may_change)
            except BaseException:
                self.run_dir.unlock()  # a refused claim leaves the run dir free
                raise
        return self.resumed

    def announce_resume(self, position):
        if self.chief:
            self.run_dir.announce_resume(position)

    @contextlib.contextmanager
    def tracking(self):
        """The MLflow run of this run dir (continued on resume); yields the active run.

        On a non-chief worker nothing is tracked and it yields None.
        """
        if not self.chief:
            yield None
            return
        with tracking.store_failures(self.tracking_uri, self.run_dir.path):
            with tracking.tracked_run(self.experiment, self.config, run_dir=self.run_dir.path,
                                      tracking_uri=self.tracking_uri,
                                      run_name=self.run_name) as active:
                self.run_id = active.info.run_id
                self._metrics = tracking.MetricLog(self.run_id, resumed=self.resumed)
                yield active

    def log_metrics(self, metrics, step):
        """Log {name: value} at `step`, once per (name, step) over every resume."""
        if self._metrics is not None:
            return self._metrics.log(metrics, step)
        return {}

    def finish(self, step, exports=None, metrics=None, **extra):
        """Mark the run finished and say where its outputs are; returns the run's summary.

        The summary every pipeline's `train` returns: `run_id`, `run_dir`, `step` (the
        pipeline's own counter: epoch, env step or GRPO step), `exports` ({name: path}) and
        the final `metrics`, plus anything in `extra`.
        """
        summary = {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "step": step,
            "exports": {name: str(path) for name, path in (exports or {}).items()},
            "metrics": dict(metrics or {}),
            **extra,
        }
        if self.chief:
            self.run_dir.finish(summary)
            print(f"MLflow run {self.run_id} ({self.run_name}); run dir {self.run_dir}",
                  flush=True)
            for name, path in summary["exports"].items():
                print(f"export ({name}): {path}", flush=True)
        self.run_dir.unlock()
        return summary

    def close(self):
        """Release the run dir (also done by `finish`, and by the OS when the process ends)."""
        self.run_dir.unlock()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
