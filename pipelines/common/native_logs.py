"""Import TensorFlow without the INFO lines its native libraries print as they load.

TensorFlow's C++ libraries log a few INFO lines when they load (oneDNN, missing CUDA
drivers, CPU instruction sets), and TensorFlow 2.21 prints them twice. They come before
TensorFlow's logging is set up, so `TF_CPP_MIN_LOG_LEVEL` does not hide them, and a CLI's
one-line error would sit under six lines of them. On a machine without a GPU, the first
use of a device adds an error line, "failed call to cuInit: ... UNKNOWN ERROR (303)": the
CUDA build of TensorFlow found no driver, which is how it runs on a CPU. `import_tensorflow`
imports TensorFlow and lists its devices (so that line comes now) with the process' stderr
(file descriptor 2, where the C++ code writes) sent to a temporary file, then writes back
every line except those INFO lines (and the notes that come with them) and that one
cuInit line, so warnings and real errors still show.

Each entry point calls it where it would first import TensorFlow, after setting what must
be set before (importing TensorFlow imports Keras, which fixes its backend; TF-Agents needs
TF_USE_LEGACY_KERAS): `pipelines.sac.__main__`, `pipelines.grpo.__main__.main`,
`pipelines.export.main`, and the `pipelines.image` package.
"""

import os
import re
import sys
import tempfile

# An absl INFO line ("I0000 00:00:1795661947.418990   16232 port.cc:153] ...": before
# logging starts, the time field is seconds since the epoch) and what absl and TensorFlow
# print along with them.
_INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\] ")
_NOTES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",  # the second line of cpu_feature_guard's INFO
)
# "E0000 00:00:1796324688.146924    4889 cuda_platform.cc:52] failed call to cuInit: ..."
_NO_CUDA_DRIVER = re.compile(r"^E\d{4} \d\d:\d\d:[\d.]+\s+\d+ cuda_\w+\.cc:\d+\] "
                             r"failed call to cuInit: ")


def is_native_info_line(line):
    """Whether `line` is one of the INFO lines (or their notes) that loading prints."""
    return bool(_INFO_LINE.match(line)) or line.startswith(_NOTES)


def is_dropped_line(line):
    """Whether `import_tensorflow` drops `line`: a load-time INFO line or note, or the
    cuInit error of a machine without a GPU driver."""
    return is_native_info_line(line) or bool(_NO_CUDA_DRIVER.match(line))


def import_tensorflow():
    """Import TensorFlow, dropping its load-time INFO lines and the no-GPU cuInit line
    unless TF_CPP_MIN_LOG_LEVEL is 0.

    Returns the `tensorflow` module. Does nothing more once TensorFlow is imported.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow

            tensorflow.config.list_physical_devices()  # where a CPU-only machine says cuInit
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not is_dropped_line(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
    return tensorflow
