"""What every benchmark shares: set-up, pinning, interleaved rounds, spread, the results file.

Benchmarks run as scripts (`nice .venv/bin/python benchmarks/<name>.py ...`), so this
directory is on `sys.path` and a script starts with

    import common                    # puts the repository root on sys.path
    common.setup()                   # env defaults; call before importing keras/TF
    ...
    parser = common.parser(__doc__)  # argparse with --name and --cpu
    args = parser.parse_args()
    common.pin(args.cpu)             # this process and its children on one core
    times = common.interleave({"plain": run_plain, "era": run_era}, rounds=30)
    lines = [common.table(["variant", "median ms"], rows), ...]
    common.write_results(args.name, "Title", lines)

The API, all of it:

- `ROOT`, `RESULTS`: the repository root and `benchmarks/results/`.
- `setup(backend="tensorflow", legacy_keras=False)`: `KERAS_BACKEND` (kept if already
  set), quiet TensorFlow logs, and for TF-Agents code `TF_USE_LEGACY_KERAS=1` on the
  TensorFlow backend. Records the load average at the start.
- `parser(doc, name=None, cpu=None)`: an ArgumentParser described by the docstring's first
  line, with `--name` (results go to `benchmarks/results/<name>.md`; default: the script's
  name) and `--cpu` (pin to that core; `cpu` is the script's default, None = no pinning).
- `pin(cpu)`: pin this process, and every process it starts, to one core, as
  `taskset -c <cpu>` does. Timing benchmarks default to core 1 so that variants and
  subprocesses compete for the same core alike.
- `interleave(variants, rounds, order="fixed"|"alternate"|"shuffle", seed=0)`: call each
  `variants[name]()` once per round, round after round, so that load from other processes
  hits all variants alike; returns `{name: [value per round]}`.
- `add_clock_argument(parser)`, `clock(name)`: `--clock wall|cpu` and its timer. Wall time
  (`time.perf_counter`) is what a user waits; CPU time (`time.process_time`, every thread
  of the process) is what the work costs, and stays put while other processes share the
  core, so use it on a busy machine (the results file's command records which).
- `quartiles(values)`: (25%, median, 75%). `mean_sd(values)`: mean and sample standard
  deviation (0 for one value). `format_mean_sd(values, digits=3, scale=1)`: "m ± s".
- `command()`: the command line that ran this script, as it goes in a results file.
- `machine()`: one line on the machine: cores, pinning, library versions, load average at
  the start and now.
- `table(header, rows)`: a Markdown table.
- `write_results(name, title, sections)`: writes `benchmarks/results/<name>.md` (title,
  command, machine, then the sections), prints it, and keeps a hand-written `## Reading`
  section of the file it replaces. Returns the path.
"""

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The script as started (a benchmark may chdir into a scratch directory later).
_script = pathlib.Path(sys.argv[0]).resolve()
_load_at_start = os.getloadavg()[0]
_pinned = None


def setup(backend="tensorflow", legacy_keras=False):
    """Environment defaults; call before anything imports Keras or TensorFlow."""
    global _load_at_start
    os.environ.setdefault("KERAS_BACKEND", backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if legacy_keras:
        # TF-Agents needs `tf.keras` to be Keras 2 (tf_keras); TF reads this once, at import.
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ["KERAS_BACKEND"] = "tensorflow"
    _load_at_start = os.getloadavg()[0]


def parser(doc, name=None, cpu=None):
    """An ArgumentParser with the flags every benchmark has: --name and --cpu."""
    script = _script.stem
    result = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    result.add_argument("--name", default=name or script,
                        help="results go to benchmarks/results/<name>.md")
    result.add_argument("--cpu", type=int, default=cpu,
                        help="pin this process and its children to this core (as taskset -c); "
                             "-1 or none: no pinning")
    return result


def pin(cpu):
    """Pin this process, and the processes it starts, to core `cpu` (None or < 0: no pinning)."""
    global _pinned
    if cpu is None or cpu < 0:
        return
    available = os.sched_getaffinity(0)
    if cpu not in available:
        raise SystemExit(f"error: --cpu {cpu} is not one of this machine's cores "
                         f"{sorted(available)}")
    os.sched_setaffinity(0, {cpu})
    _pinned = cpu


def interleave(variants, rounds, order="fixed", seed=0, progress=True):
    """Run every variant once per round, round after round: {name: [result per round]}.

    order: "fixed" (the dict's order every round), "alternate" (reversed every other
    round, so no variant always runs first) or "shuffle" (a seeded random order per round).
    """
    names = list(variants)
    rng = np.random.default_rng(seed)
    results = {name: [] for name in names}
    for round_index in range(rounds):
        if order == "alternate" and round_index % 2:
            this_round = names[::-1]
        elif order == "shuffle":
            this_round = [names[i] for i in rng.permutation(len(names))]
        else:
            this_round = names
        for name in this_round:
            results[name].append(variants[name]())
        if progress:
            print(f"round {round_index + 1}/{rounds} done", flush=True)
    return results


def add_clock_argument(parser):
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (all threads), "
                             "steadier on a shared machine")


def clock(name):
    """The timer `--clock name` asks for: time.perf_counter (wall) or time.process_time (cpu)."""
    return {"wall": time.perf_counter, "cpu": time.process_time}[name]


def quartiles(values):
    """(25th percentile, median, 75th percentile)."""
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return float(q1), float(median), float(q3)


def mean_sd(values):
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def format_mean_sd(values, digits=3, scale=1.0):
    mean, sd = mean_sd(np.asarray(values, dtype=np.float64) * scale)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def command():
    """The command line that ran this script, relative to the repository root."""
    script = _script
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    prefix = "nice " if os.nice(0) > 0 else ""
    return f"{prefix}.venv/bin/python {shlex.join([str(script), *sys.argv[1:]])}"


def commit():
    """The repository's commit (short hash, "+dirty" when code differs from it)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    # Results files change while benchmarks run; only changes to the code make a tree dirty.
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)benchmarks/results")
    return head + ("+dirty" if changed else "")


def machine():
    """One line: commit, cores, pinning, versions of what is loaded, load average then and
    now."""
    versions = []
    for module in ("tensorflow", "keras", "jax", "torch"):
        if module in sys.modules:
            versions.append(f"{module} {getattr(sys.modules[module], '__version__', '?')}")
    pinning = f"pinned to core {_pinned}" if _pinned is not None else "not pinned"
    return "; ".join([
        f"commit {commit()}",
        f"{os.cpu_count()} CPU cores shared with other work, {pinning}",
        *([", ".join(versions)] if versions else []),
        f"1-minute load average {_load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.",
    ])


def table(header, rows):
    """A Markdown table from a header and rows of cells."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name, title, sections):
    """Write benchmarks/results/<name>.md (title, command, machine, sections) and print it.

    A `## Reading` section written by hand into the previous file is kept at the end.
    """
    path = RESULTS / f"{name}.md"
    text = "\n\n".join([f"# {title}", f"Command: `{command()}`", f"Machine: {machine()}",
                        *sections]).rstrip() + "\n"
    old = path.read_text() if path.exists() else ""
    if "## Reading" in old:
        text += "\n" + old[old.index("## Reading"):]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"wrote {path.relative_to(ROOT)}")
    return path
