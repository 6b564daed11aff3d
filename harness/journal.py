"""run_outputs/: every finished batch of an accuracy run, written atomically.

A file holds {"query_ids": [qsl indices], "outputs": [post-processed id lists]} like the
reference's q<indices>.pkl. Files are written under a temporary name, flushed to disk and
renamed, so a killed run leaves only whole files; a restarted run (--resume) reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harness.run_record import differences

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"  # what the answers were made from (harness.run_record)
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
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, ImportError,
            ValueError) as exc:
        raise JournalError(f"{path}: not a run_outputs batch file ({type(exc).__name__}: {exc})") from None
    try:
        if len(indices) != len(outputs):
            raise JournalError(f"{path}: {len(indices)} query_ids but {len(outputs)} outputs")
        batch = {_integer(i): [_integer(t) for t in out] for i, out in zip(indices, outputs, strict=True)}
    except (TypeError, ValueError) as exc:
        raise JournalError(f"{path}: corrupt run_outputs batch file ({exc})") from None
    if len(batch) != len(indices):
        raise JournalError(f"{path}: corrupt run_outputs batch file (a qsl index appears twice)")
    return batch


def _integer(value: object) -> int:
    """An id or index as an int; the reference's numpy integers pass, anything else is corruption."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"expected integers, found {type(value).__name__} {value!r:.40}")
    return int(value)


def read_journal(folder: Path) -> dict[int, list[int]]:
    """Every journaled output of a folder; a sample found twice must have the same answer."""
    done: dict[int, list[int]] = {}
    for path in sorted(folder.glob("q*.pkl")):
        for index, ids in read_batch_file(path).items():
            if index in done and done[index] != ids:
                raise JournalError(f"{folder}: sample {index} is journaled twice with different outputs")
            done[index] = ids
    return done


def read_run_record(folder: Path) -> dict | None:
    """RUN_RECORD of a journal folder (None: a journal from before records, or another harness)."""
    path = folder / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise JournalError(f"{path}: unreadable run record ({exc})") from None
    if not isinstance(record, dict):
        raise JournalError(f"{path}: corrupt run record (not a JSON object)")
    return record


class Journal:
    """Appends finished batches to a run_outputs folder (each batch its own file, so workers never
    share one). `made_from` (harness.run_record) is written beside them; a resumed run must match it."""

    def __init__(self, folder: Path, resume: bool, made_from: dict, unverified: bool = False) -> None:
        self.folder = folder
        existing = sorted(folder.glob("q*.pkl")) if folder.is_dir() else []
        if existing and not resume:
            raise JournalError(
                f"{folder}: holds {len(existing)} outputs of an earlier run; pass --resume to reuse them "
                "or choose another --output-log-dir"
            )
        self.done: dict[int, list[int]] = {}
        if resume:
            self._check_same_run(read_run_record(folder) if folder.is_dir() else None, made_from, bool(existing),
                                 unverified)
            self.done = read_journal(folder) if existing else {}
            log.info("Resuming: %d samples already answered in %s", len(self.done), folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / RUN_RECORD, json.dumps(made_from, indent=1, sort_keys=True).encode())
        self.answers = len(self.done)  # answers the folder holds

    def _check_same_run(self, recorded: dict | None, made_from: dict, has_outputs: bool, unverified: bool) -> None:
        if recorded is None:
            if has_outputs and not unverified:
                raise JournalError(f"{self.folder}: has no {RUN_RECORD}, so its answers cannot be checked against this "
                                   "run's dataset, model and settings; pass --resume-unverified to reuse them anyway")
            if has_outputs:
                log.warning("%s has no %s: reusing its answers unchecked (--resume-unverified)", self.folder,
                            RUN_RECORD)
            return
        changed = differences(recorded, made_from)
        if changed:
            raise JournalError(f"{self.folder}: its answers were made with another {'; another '.join(changed)}; "
                               "resume with the same inputs or choose another --output-log-dir")

    def record(self, qsl_indices: Sequence[int], outputs: Sequence[Sequence[int]]) -> None:
        payload = pickle.dumps({"query_ids": list(qsl_indices), "outputs": [list(o) for o in outputs]})
        write_atomically(self.folder / batch_file_name(qsl_indices), payload)
        self.answers += len(qsl_indices)
