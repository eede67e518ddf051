"""How a pipeline's command line fails: user errors in one line and exit code 2, bugs loudly.

A `UserError` is something the user can fix (a flag value, a missing file, a corrupt
checkpoint): `run_cli` prints it as `error: ...` on one line and returns 2, as argparse
does for a bad flag. Anything else is a bug in this project and keeps its traceback.
"""

import sys


class UserError(Exception):
    """A problem with what the user asked for.

    The message says what is wrong and what is allowed.
    """


class ConfigError(UserError, ValueError):
    """One or more invalid settings, reported together (see `pipelines.common.config.Problems`)."""

    def __init__(self, what, problems):
        self.what = what
        # A problem may be a whole message of its own (such as a dataset's); its full stop
        # would end up before the "; " that joins it to the next.
        self.problems = [problem.rstrip(". ") for problem in problems]
        super().__init__(f"invalid {what}: " + "; ".join(self.problems) + ".")


class CorruptCheckpointError(UserError):
    """A checkpoint or run-dir file that cannot be read.

    The message names the file and the way out.
    """


def run_cli(main, argv=None):
    """Call `main(argv)`; turn a UserError into one line on stderr and exit status 2."""
    try:
        return main(argv) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
