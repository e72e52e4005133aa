"""What every command shares about failing: exit codes, and the one exception type each
command's `main` catches. A failure says itself in one line (`str()`) and knows the exit
code it ends the command with, so no call site translates one error into another."""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Failure(Exception):
    """A failure to report in one line and exit with `exit_code`: 1, a runtime failure."""

    exit_code = EXIT_FAILURE


class UsageError(Failure):
    """Bad usage or a bad configuration: exit 2."""

    exit_code = EXIT_USAGE
