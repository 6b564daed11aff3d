"""Ctrl-C (SIGINT) and SIGTERM: a run that stops cleanly instead of a traceback or a segfault.

Outside a loadgen test a signal raises Interrupted wherever the main thread is (loading the model,
say), so the entry point can say so in one line. During the test loadgen runs on a thread of its
own and the main thread waits in Python, where signal handlers run at once: the first signal
calls `on_signal` (the SUT fails what is outstanding and its backends stop, so loadgen ends its
test and writes its logs); a second one calls `on_second_signal`, for a test that would take too
long to end (loadgen's Server schedule keeps issuing queries until it is over).
"""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
JOIN_POLL_S = 0.2  # the waiting main thread wakes this often (signal handlers run between waits)


class Interrupted(BaseException):
    """A SIGINT or SIGTERM arrived; exit_code is the shell's convention, 128 + the signal number.

    A BaseException, as KeyboardInterrupt is: the `except Exception` of a library (tqdm, a
    checkpoint loader) or of our own error handling must not swallow it and carry on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextlib.contextmanager
def handling_signals(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM in the block, the previous handlers restored after it."""
    previous = {signum: signal.signal(signum, handler) for signum in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def raising_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread (SIGTERM would otherwise kill the
    process silently, SIGINT raise KeyboardInterrupt)."""
    def raise_interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    with handling_signals(raise_interrupted):
        yield


def run_interruptible(target: Callable[[], None], on_signal: Callable[[int], None],
                      on_second_signal: Callable[[int], None]) -> int | None:
    """Run `target` on its own thread until it returns; the first signal meanwhile calls
    on_signal(signum), any later one on_second_signal(signum). Returns the first signal's number,
    or None. An exception of target is raised here.

    The handler only records the signal; the waiting loop makes the calls. A handler that did the
    work itself could be entered again, by the next signal, in the middle of its own call (Python
    runs handlers between any two bytecodes): a second Ctrl-C would then close the engines before
    the first had marked the run as failed, or wait forever on a lock the first one holds."""
    received: list[int] = []
    pending: collections.deque[int] = collections.deque()
    failure: list[BaseException] = []

    def handle(signum: int, _frame: object) -> None:
        pending.append(signum)

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="loadgen")
    with handling_signals(handle):
        thread.start()
        while thread.is_alive():
            thread.join(JOIN_POLL_S)
            while pending:
                signum = pending.popleft()
                received.append(signum)
                (on_signal if len(received) == 1 else on_second_signal)(signum)
    received.extend(pending)  # arrived as the test ended: nothing left to stop, but the run was interrupted
    if failure:
        raise failure[0]
    return received[0] if received else None
