"""run_outputs/: every finished batch of an accuracy run, written atomically.

A file holds {"query_ids": [qsl indices], "outputs": [post-processed id lists]} like the
reference's q<indices>.pkl. Files are written under a temporary name, flushed to disk and
renamed, so a killed run leaves only whole files; a restarted run (--resume) reads them back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

MAX_NAME_INDICES = 16  # longer batches get a short hashed name: file names stop at 255 bytes


class JournalError(RuntimeError):
    """run_outputs/ cannot be used as asked; the message names the folder and the fix."""


def batch_file_name(qsl_indices: Sequence[int]) -> str:
    if len(qsl_indices) <= MAX_NAME_INDICES:
        return "q" + "_".join(str(i) for i in qsl_indices) + ".pkl"
    digest = hashlib.sha256(",".join(map(str, qsl_indices)).encode()).hexdigest()[:12]
    return f"q{qsl_indices[0]}_{qsl_indices[-1]}_n{len(qsl_indices)}_{digest}.pkl"


def write_atomically(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        # The rename itself must reach the disk too, or a power cut can lose a whole file.
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_batch_file(path: Path) -> dict[int, list[int]]:
    """qsl index -> output ids of one journal file (numpy arrays from the reference accepted)."""
    try:
        with path.open("rb") as handle:
            record = pickle.load(handle)
        indices, outputs = record["query_ids"], record["outputs"]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as exc:
        raise JournalError(f"{path}: not a run_outputs batch file ({type(exc).__name__}: {exc})") from None
    if len(indices) != len(outputs):
        raise JournalError(f"{path}: {len(indices)} query_ids but {len(outputs)} outputs")
    return {int(i): [int(t) for t in out] for i, out in zip(indices, outputs, strict=True)}


def read_journal(folder: Path) -> dict[int, list[int]]:
    """Every journaled output of a folder; a sample found twice must have the same answer."""
    done: dict[int, list[int]] = {}
    for path in sorted(folder.glob("q*.pkl")):
        for index, ids in read_batch_file(path).items():
            if index in done and done[index] != ids:
                raise JournalError(f"{folder}: sample {index} is journaled twice with different outputs")
            done[index] = ids
    return done


class Journal:
    """Appends finished batches to a run_outputs folder (each batch its own file, so workers never share one)."""

    def __init__(self, folder: Path, resume: bool) -> None:
        self.folder = folder
        existing = sorted(folder.glob("q*.pkl")) if folder.is_dir() else []
        if existing and not resume:
            raise JournalError(
                f"{folder}: holds {len(existing)} outputs of an earlier run; pass --resume to reuse them "
                "or choose another --output-log-dir"
            )
        folder.mkdir(parents=True, exist_ok=True)
        self.done = read_journal(folder) if resume else {}
        if resume:
            log.info("Resuming: %d samples already answered in %s", len(self.done), folder)

    def record(self, qsl_indices: Sequence[int], outputs: Sequence[Sequence[int]]) -> None:
        payload = pickle.dumps({"query_ids": list(qsl_indices), "outputs": [list(o) for o in outputs]})
        write_atomically(self.folder / batch_file_name(qsl_indices), payload)
