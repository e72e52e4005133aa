"""What every command shares about failing: exit codes and the one-line runtime failure."""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Failure(Exception):
    """A runtime failure to report in one line and exit 1."""
