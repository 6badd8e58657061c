"""Transient faults are retried before they become a reject.

A read error, a decoder killed by a signal or a timeout under load says nothing about the input: the same call
usually succeeds a moment later. ``retry_transient`` runs a call up to ``attempts`` times while it raises an error
``is_transient`` accepts, waiting a little longer each time; the last error is raised as it was, so the caller's
reject says what happened (and marks itself transient: ``--retry-transient`` tries such rejects again on a rerun).
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

ATTEMPTS = 3  # the first call and two retries
BASE_DELAY_S = 0.5


def retry_transient(call: Callable[[], T], is_transient: Callable[[BaseException], bool], attempts: int = ATTEMPTS,
                    base_delay_s: float = BASE_DELAY_S) -> T:
    """``call()``, again after ``base_delay_s * 2**n`` while it raises a transient error, at most ``attempts`` times."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_transient(exc):
                raise
            time.sleep(base_delay_s * 2**attempt)
    raise AssertionError("unreachable")
