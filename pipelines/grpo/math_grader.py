"""Math answers graded by math-verify (the grader TRL and verl use), with a deadline per answer.

`MathGrader()(completion, reference)` is True when the completion's final answer equals
the reference. The final answer is, in this order:

1. the last `\\boxed{...}` of the completion (as verl's DAPO reward and the ERA authors'
   evaluation take it);
2. else what math-verify's extraction finds after an anchor ("final answer is ...",
   "Answer: ...": DAPO-Math's prompts ask for "Answer: $Answer") or in LaTeX math
   (`$...$`, `\\(...\\)`, `\\[...\\]`, `\\frac{a}{b}`), the rightmost first;
3. else the last number of the text ("1,000", "-3/4", "0.5"): how the built-in tasks and
   GSM8K-style answers end.

The reference is parsed once (and cached) as the contents of a `\\boxed{}`, so "x + 1",
"[1,2)", "50\\%" and "\\frac{1}{2}" read as LaTeX. Equality is math-verify's `verify`:
numbers to 6 decimals, fractions, symbolic equality, intervals, sets and tuples, units and
percent signs dropped ("5 cm" equals 5, "50\\%" equals 50 and 0.5).

Why a worker process: math-verify's own timeouts use SIGALRM, which only the main thread
may arm, and neither they nor any signal stop a C call in progress. Each grader grades in
a worker process of its own; there an interval timer bounds every answer to `timeout`
seconds (an answer that runs out is wrong), and a worker that has not answered
`KILL_GRACE_S` later is killed and replaced. One pathological completion costs at most
`timeout + KILL_GRACE_S` seconds, from any thread.
"""

import functools
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

from pipelines.common.errors import UserError

GRADING_TIMEOUT_S = 5.0
KILL_GRACE_S = 1.0
STARTUP_TIMEOUT_S = 120.0  # importing sympy on a busy machine

# The last number of a text: what the built-in tasks' rewards always read.
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text):
    """Contents of the last \\boxed{...} (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


def last_number(text):
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


# --- grading itself (runs in the worker) ----------------------------------------------
@functools.lru_cache(maxsize=1)
def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return {
        "latex": (LatexExtractionConfig(),),
        "anchored": (LatexExtractionConfig(),
                     ExprExtractionConfig(try_extract_without_anchor=False)),
    }


def _parse(text, configs):
    from math_verify import parse

    # No timeout of its own: the worker's timer bounds the whole answer.
    return parse(text, _configs()[configs], parsing_timeout=None)


@functools.lru_cache(maxsize=65536)
def parsed_reference(reference):
    """The reference as math-verify reads it: `\\boxed{reference}` (or the text itself)."""
    reference = reference.strip().strip("$").strip()
    return _parse(f"\\boxed{{{reference}}}", "latex") or [reference]


def parsed_answer(completion):
    """math-verify's reading of the completion's final answer (see the module docstring)."""
    boxed = last_boxed(completion)
    if boxed is None:
        found = _parse(completion, "anchored")
        if found:
            return found
        boxed = last_number(completion)  # read as LaTeX too: sympy's own parser is 10x slower
    return _parse(f"\\boxed{{{boxed}}}", "latex") if boxed is not None else []


def grade(completion, reference):
    """True when the completion's final answer equals `reference` (no deadline: in-process)."""
    from math_verify import verify

    answer = parsed_answer(completion)
    return bool(answer) and verify(parsed_reference(reference), answer, timeout_seconds=None)


class _OutOfTime(BaseException):
    """Raised by the worker's timer; a BaseException so that no `except Exception` in
    math-verify or sympy swallows it."""


def _on_timer(signum, frame):
    raise _OutOfTime()


def serve(fd):
    """The worker: answer (completion, reference, timeout) requests until the pipe closes."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs whole completions
    connection = Connection(fd)
    try:
        import math_verify  # noqa: F401
    except ImportError as error:
        connection.send(("error", f"{error}; install the grpo extra (math-verify==0.9.0)"))
        return
    grade("\\boxed{1}", "1")  # import everything it imports before saying ready
    connection.send(("ready", None))
    signal.signal(signal.SIGALRM, _on_timer)
    while True:
        try:
            completion, reference, timeout = connection.recv()
        except EOFError:
            return
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                result = grade(completion, reference)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _OutOfTime:
            result = False
        except Exception:  # math-verify returns False on its own errors; anything else too
            result = False
        connection.send(bool(result))


# --- the grader the rewards call (runs in the training or evaluation process) ---------------
class MathGrader:
    """Grades answers in a worker process, each within `timeout` seconds.

    Thread-safe. The worker starts on the first call and is replaced when it overruns;
    it exits by itself when its grader is gone (its pipe closes).
    """

    def __init__(self, timeout=GRADING_TIMEOUT_S):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}.")
        self.timeout = float(timeout)
        self.restarts = 0
        self._lock = threading.Lock()
        self._process = self._connection = None
        self._ready = False

    @property
    def worker_pid(self):
        """The worker's process id (None before the first call)."""
        return self._process.pid if self._process is not None else None

    def __call__(self, completion, reference):
        with self._lock:
            if self._process is None:
                self._start()
            if not self._ready:
                self._wait_until_ready()
            try:
                self._connection.send((completion, str(reference), self.timeout))
            except OSError:  # the worker died since the last answer: ask a fresh one
                self._stop()
                self._start()
                self._wait_until_ready()
                self._connection.send((completion, str(reference), self.timeout))
            if self._connection.poll(self.timeout + KILL_GRACE_S):
                try:
                    return self._connection.recv()
                except EOFError:  # the worker died (out of memory, killed): a fresh one
                    pass
            self.restarts += 1
            self._stop()
            self._start()  # boots while the caller carries on
            return False

    def _start(self):
        parent, child = socket.socketpair()
        root = str(pathlib.Path(__file__).resolve().parents[2])  # where `pipelines` lives
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-c",
             f"from pipelines.grpo.math_grader import serve; serve({child.fileno()})"],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        child.close()
        self._connection = Connection(parent.detach())
        self._ready = False

    def _wait_until_ready(self):
        message = None
        if self._connection.poll(STARTUP_TIMEOUT_S):
            try:
                message = self._connection.recv()
            except EOFError:
                pass
        if message is not None and message[0] == "error":
            self._stop()
            raise UserError(f"The math grader cannot start: {message[1]}.")
        if message is None or message[0] != "ready":
            code = self._process.poll()
            self._stop()
            detail = (
                f"it exited with status {code}" if code is not None
                else f"it did not start within {STARTUP_TIMEOUT_S:.0f} s")
            raise RuntimeError(f"The math grader's worker process failed: {detail}.")
        self._ready = True

    def _stop(self):
        if self._connection is not None:
            self._connection.close()
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._process = self._connection = None
        self._ready = False

    def close(self):
        """Stop the worker (a later call starts a new one)."""
        with self._lock:
            self._stop()
