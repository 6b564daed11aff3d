"""Output folders are created and proven writable before any work, so that a long run never ends
with results it cannot write. Entry points turn OutputDirError into one line and exit status 2."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

OUTPUT_DIR_EXIT_STATUS = 2


class OutputDirError(Exception):
    """An output folder that cannot be created or written; the message is one line naming it."""


def ensure_writable_dir(path: Path, flag: str) -> Path:
    """Creates `path` (and its parents) if needed and writes, then removes, a probe file in it.
    Returns path; raises OutputDirError naming `flag` (e.g. "--output-dir") and the folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{flag} {path}: not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(b"probe")  # closing flushes it: a full disk shows here, not only in the open
        finally:
            os.unlink(probe)
    except OSError as exc:
        raise OutputDirError(f"{flag} {path}: not writable ({exc.strerror or exc})") from None
    return path


LOCK_FILE = ".main.lock"


@contextlib.contextmanager
def exclusive_use(path: Path, flag: str) -> Iterator[None]:
    """Holds an flock on a lock file in `path` (whose content is the holder's pid) for as long as
    the block runs: two runs writing one folder interleave their logs and journal. The kernel drops
    the lock when its process dies, so a killed run never leaves the folder locked."""
    lock_path = Path(path) / LOCK_FILE
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 (held for the whole block, closed in finally)
    except OSError as exc:
        raise OutputDirError(f"{flag} {path}: cannot create its lock file ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputDirError(f"{flag} {path}: another run (pid {holder}) is using this folder; wait for it to "
                                 "end or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
