"""TensorFlow's load-time INFO lines, and the cuInit line of a machine without a GPU, are
dropped from a CLI's stderr; nothing else is."""

import os
import subprocess
import sys
import textwrap

import pytest

from pipelines.common.native_logs import is_dropped_line, is_native_info_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIET_IMPORT = "from pipelines.common.native_logs import import_tensorflow; import_tensorflow()"
INFO = "I0000 00:00:1795661947.418990   16232 port.cc:153] oneDNN custom operations are on.\n"
NOTE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
CUINIT = ("E0000 00:00:1796324688.146924    4889 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")


def _stderr_of(code, pythonpath=(), args=None, cwd=None, **env):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*pythonpath, ROOT]), **env}
    command = [sys.executable, *(args or ["-c", code])]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)
    return done.returncode, done.stderr


def test_only_info_lines_and_their_notes_are_recognised():
    assert is_native_info_line(INFO) and is_native_info_line(NOTE)
    assert is_native_info_line(
        "I0000 00:00:1795662158.341710   17951 cpu_feature_guard.cc:227] This TensorFlow ...")
    assert is_native_info_line("To enable the following instructions: AVX2 FMA, in other ...")
    for kept in ("W0000 00:00:1795661947.4 16232 port.cc:1] a warning",
                 "E0000 00:00:1795661947.4 16232 port.cc:1] an error",
                 "error: epochs must be >= 1 (got 0).",
                 "/x/y.py:3: DeprecationWarning: old",
                 "Info about I0000 00:00:1.0 1 a.cc:1] in the middle"):
        assert not is_native_info_line(kept), kept
        assert not is_dropped_line(kept), kept
    assert is_dropped_line(CUINIT) and not is_native_info_line(CUINIT)
    assert not is_dropped_line(
        "E0000 00:00:1796324688.1 4889 cuda_platform.cc:52] failed call to cuMemAlloc: OOM")


@pytest.fixture
def fake_tensorflow(tmp_path):
    """A `tensorflow` module that writes what the real one's native code writes, straight to
    file descriptor 2, plus a warning and a Python-level message; listing its devices
    writes the no-driver cuInit line and a real error."""
    def make(raise_error=False):
        (tmp_path / "tensorflow.py").write_text(textwrap.dedent(f"""
            import os, sys, types
            os.write(2, {NOTE!r}.encode() + {INFO!r}.encode())
            os.write(2, b"W0000 00:00:1795661947.5   16232 x.cc:2] keep this warning\\n")
            print("and this Python message", file=sys.stderr)
            if {raise_error!r}:
                raise ImportError("a broken install")

            def list_physical_devices(kind=None):
                os.write(2, {CUINIT!r}.encode())
                os.write(2, b"E0000 00:00:1795661947.6   16232 y.cc:3] keep this error\\n")
                return []

            config = types.SimpleNamespace(list_physical_devices=list_physical_devices)
        """))
        return str(tmp_path)
    return make


def test_the_quiet_import_drops_the_info_lines_and_keeps_the_rest(fake_tensorflow):
    code, err = _stderr_of(QUIET_IMPORT, pythonpath=[fake_tensorflow()])
    assert code == 0, err
    assert err.splitlines() == [
        "W0000 00:00:1795661947.5   16232 x.cc:2] keep this warning",
        "and this Python message",
        "E0000 00:00:1795661947.6   16232 y.cc:3] keep this error",
    ]


def test_level_0_keeps_everything(fake_tensorflow):
    _, err = _stderr_of(QUIET_IMPORT + "\nimport tensorflow; tensorflow.config."
                        "list_physical_devices()", pythonpath=[fake_tensorflow()],
                        TF_CPP_MIN_LOG_LEVEL="0")
    assert INFO in err and NOTE in err and CUINIT in err


def test_a_failing_import_still_shows_its_output_and_traceback(fake_tensorflow):
    code, err = _stderr_of(QUIET_IMPORT, pythonpath=[fake_tensorflow(raise_error=True)])
    assert code == 1
    assert "keep this warning" in err and "ImportError: a broken install" in err
    assert INFO not in err


@pytest.mark.parametrize("argv", [
    ["-m", "pipelines.image", "--epochs", "0"],
    ["-m", "pipelines.sac", "--env", "Nope-v0"],
    ["-m", "pipelines.grpo", "--model", "no-such-preset"],
    ["-m", "pipelines.export", "--path", "/nonexistent", "--model-name", "m"],
], ids=["image", "sac", "grpo", "export"])
def test_a_cli_error_is_its_only_line_on_stderr(argv, tmp_path):
    """Whatever this TensorFlow prints on load, a CLI's bad input shows one line. If plain
    `import tensorflow` prints no INFO lines here, this still checks the CLIs' own output."""
    code, err = _stderr_of(None, args=argv, cwd=tmp_path)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err


def test_the_sac_entry_point_sets_its_environment_before_tensorflow_loads():
    """The quiet import comes after what TF-Agents needs: Keras on TensorFlow (even where
    KERAS_BACKEND says jax) and tf.keras as Keras 2."""
    code, err = _stderr_of(
        "import runpy; runpy.run_module('pipelines.sac', run_name='not_main')\n"
        "import keras, tensorflow as tf\n"
        "assert keras.backend.backend() == 'tensorflow', keras.backend.backend()\n"
        "assert type(tf.keras.layers.Dense(1)).__module__.startswith('tf_keras')",
        KERAS_BACKEND="jax")
    assert code == 0, err


def test_the_real_tensorflow_loads_quietly():
    """Whatever this TensorFlow prints on load and first device use at
    TF_CPP_MIN_LOG_LEVEL=2, the quiet import leaves none of its INFO lines, nor the cuInit
    line of a machine without a GPU, and running an op afterwards prints nothing more."""
    _, raw = _stderr_of("import tensorflow as tf; tf.constant(1.0) + 1",
                        TF_CPP_MIN_LOG_LEVEL="2")
    code, err = _stderr_of(QUIET_IMPORT + "\nimport tensorflow as tf; tf.constant(1.0) + 1")
    assert code == 0, err
    assert not [line for line in err.splitlines() if is_dropped_line(line)], err
    if not [line for line in raw.splitlines() if is_dropped_line(line)]:
        pytest.skip("this TensorFlow prints no INFO or cuInit lines here")
