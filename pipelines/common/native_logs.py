"""Import TensorFlow without the INFO lines its native libraries print as they load.

TensorFlow's C++ libraries log a few INFO lines when they load (oneDNN, missing CUDA
drivers, CPU instruction sets), and TensorFlow 2.21 prints them twice. They come before
TensorFlow's logging is set up, so `TF_CPP_MIN_LOG_LEVEL` does not hide them, and a CLI's
one-line error would sit under six lines of them. `import_tensorflow` imports TensorFlow
with the process' stderr (file descriptor 2, where the C++ code writes) sent to a
temporary file, then writes back every line except those INFO lines (and the notes that
come with them), so warnings and errors still show.

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


def is_native_info_line(line):
    """Whether `line` is one of the INFO lines (or their notes) that loading prints."""
    return bool(_INFO_LINE.match(line)) or line.startswith(_NOTES)


def import_tensorflow():
    """Import TensorFlow, dropping its load-time INFO lines unless TF_CPP_MIN_LOG_LEVEL is 0.

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
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not is_native_info_line(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
    return tensorflow
