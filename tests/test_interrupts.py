"""run_interruptible: what the first and a second signal call, and in which order."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from harness.interrupts import run_interruptible

pytestmark = pytest.mark.quick

HANG_GUARD_S = 60  # only a hang gets near this


def test_a_second_signal_during_the_first_call_waits_for_it_to_finish():
    calls: list[str] = []
    second_called = threading.Event()

    def on_signal(signum: int) -> None:
        calls.append("first started")
        # The second signal arrives while the first call is still at work (a user pressing Ctrl-C
        # twice in quick succession); it must not cut in before the run is marked as failed.
        os.kill(os.getpid(), signal.SIGTERM)
        calls.append("first finished")

    def on_second_signal(signum: int) -> None:
        calls.append("second")
        second_called.set()

    def target() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        assert second_called.wait(HANG_GUARD_S)

    first = run_interruptible(target, on_signal, on_second_signal)
    assert first == signal.SIGINT
    assert calls == ["first started", "first finished", "second"]


def test_no_signal_returns_none_and_a_failure_of_the_target_is_raised_here():
    assert run_interruptible(lambda: None, on_signal=print, on_second_signal=print) is None

    def failing() -> None:
        raise ValueError("from the loadgen thread")

    with pytest.raises(ValueError, match="from the loadgen thread"):
        run_interruptible(failing, on_signal=print, on_second_signal=print)
