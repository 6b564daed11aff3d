"""Finding the processes a test's untrusted code left running (psutil)."""

from __future__ import annotations

from pathlib import Path

import psutil


def processes_in(root: Path) -> list[psutil.Process]:
    """Live processes whose working folder is under root (zombies and vanished ones skipped)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.cwd().startswith(str(root)):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found
