"""The one way tests wait: :func:`wait_for` polls a check until it holds, bounded by a timeout.

A wait never decides a result by sleeping a fixed time: it returns as soon as the check holds,
and the timeout is only an outer bound after which the test fails instead of hanging (so it is
generous: a loaded machine must not turn slowness into failures).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A :func:`wait_for` that ran out of time. A caller that reports the failure itself (or
    treats "still not" as an answer) suppresses this and asserts what it saw."""


def wait_for(what: str, check: Callable[[], T], timeout: float = 120.0, poll: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy, and return that; every ``poll`` s, for
    at most ``timeout`` s, then raise :class:`WaitTimeout` naming ``what``. An exception from
    ``check`` (an assertion that the awaited thing can no longer happen) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
