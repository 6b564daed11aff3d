"""The error a run reports as one line and exit status 2 (harness/run.py, tools/benchmark.py)."""


class UsageError(Exception):
    """A flag or file the run cannot use; the message is one line naming it."""
