"""A wall-clock limit on a block of Python code in this process.

Work on one input (parsing a transcript) must not hold a worker for ever when the input is built to be slow.
``time_limit`` arms a one-shot ``SIGALRM`` timer (``setitimer``) and raises ``TimeLimitExceeded`` in the block
when it fires. Python runs signal handlers between bytecodes, so the exception arrives once the C call that is
running (a regular expression, ``json.loads``) returns: the limit bounds Python-level work, and the parsers keep
each C call linear so that it ends soon enough.

Signals reach only the main thread. Elsewhere (a threaded actor: Ray Data runs a class UDF's batches in a thread
pool) ``time_limit`` does nothing, and where the platform has no ``setitimer`` (Windows) either. Ray runs a task's
function, ``map_batches`` with a plain function included, in the worker's main thread, so task stages get the limit.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

_MIN_DELAY_S = 1e-6  # setitimer(0) disarms: the shortest delay that still fires
_EARLY_S = 1e-3  # the timer and time.monotonic() are different clocks: a timer this close to its moment is due


class TimeLimitExceeded(BaseException):
    """The block ran past its limit. A ``BaseException`` so that an ``except Exception`` inside the interrupted code
    cannot swallow it (the timer fires once: a swallowed limit would let the block run on unbounded)."""

    def __init__(self, seconds: float):
        super().__init__(f"took longer than {seconds:g} s")
        self.seconds = seconds


def can_limit_time() -> bool:
    """Whether ``time_limit`` is enforced here (the main thread of a platform with ``setitimer``)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``TimeLimitExceeded`` in the block once it has run ``seconds``; None or inf: no limit.

    Nesting is safe: an enclosing limit that is due sooner still fires at its own moment (its handler runs), and on
    exit the previous handler and the rest of the previous timer are put back.
    """
    if seconds is not None and not seconds > 0:
        raise ValueError(f"time limit must be positive, got {seconds!r}")
    if seconds is None or math.isinf(seconds) or not can_limit_time():
        yield
        return
    started = time.monotonic()
    deadline = started + seconds
    state = {"exited": False, "outer_delivered": False}
    previous_handler = signal.getsignal(signal.SIGALRM)
    previous_delay, previous_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_deadline = started + previous_delay if previous_delay > 0 else None

    def on_alarm(signum, frame):
        if state["exited"]:
            return
        now = time.monotonic()
        if now >= deadline - _EARLY_S:
            raise TimeLimitExceeded(seconds)
        outer_pending = outer_deadline is not None and not state["outer_delivered"]
        if outer_pending and now >= outer_deadline - _EARLY_S:
            state["outer_delivered"] = True
            signal.setitimer(signal.ITIMER_REAL, max(deadline - now, _MIN_DELAY_S))
            _deliver(previous_handler, signum, frame)
            return
        due = min(deadline, outer_deadline) if outer_pending else deadline  # woken early: wait for the rest
        signal.setitimer(signal.ITIMER_REAL, max(due - now, _MIN_DELAY_S))

    signal.signal(signal.SIGALRM, on_alarm)
    first = seconds if previous_delay <= 0 else min(seconds, previous_delay)
    signal.setitimer(signal.ITIMER_REAL, first)
    try:
        yield
    finally:
        state["exited"] = True
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous_handler if previous_handler is not None else signal.SIG_DFL)
            if outer_deadline is not None:
                _rearm_outer(outer_deadline, previous_interval, state["outer_delivered"])


def _deliver(handler, signum, frame) -> None:
    """Run the enclosing handler at its timer's moment, as if no inner limit were there."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGALRM)


def _rearm_outer(outer_deadline: float, interval: float, delivered: bool) -> None:
    remaining = outer_deadline - time.monotonic()
    if not delivered:
        signal.setitimer(signal.ITIMER_REAL, max(remaining, _MIN_DELAY_S), interval)
    elif interval > 0:
        signal.setitimer(signal.ITIMER_REAL, interval, interval)
