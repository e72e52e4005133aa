"""What the tests do when a program they drive is not installed."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

STRICT = os.environ.get("AISTACK_TESTS_STRICT") == "1"


def tool_missing(what: str, how: str) -> NoReturn:
    """Skip, saying what is missing and how to get it; under AISTACK_TESTS_STRICT=1 (CI),
    fail instead, so a machine without the tool cannot pass by skipping."""
    message = f"{what} is missing: {how}"
    if STRICT:
        pytest.fail(message)
    pytest.skip(message)
