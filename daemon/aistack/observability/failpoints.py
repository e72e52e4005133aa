"""Named points where a test can have the process killed, to prove crash safety.

`AISTACK_FAILPOINTS=gc.after_commit` makes `failpoint("gc.after_commit")` send SIGKILL to
this process: the crash a power cut causes, at the one place a test needs it, which no
outside signal can hit reliably. Unset (always, in production) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(filter(None, os.environ.get("AISTACK_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
