"""Output folders are created and proven writable before any work, so that a long run never ends
with results it cannot write. Entry points turn OutputDirError into one line and exit status 2."""

from __future__ import annotations

import os
import tempfile
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
