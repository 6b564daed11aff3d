"""The MLPerf Mixtral dataset: load and validate the pickle, hold the prompts for loadgen's QSL.

Prompts stay token ids on the CPU (one int32 array per row); the SUT feeds them to the model
as they are, since they are the reference tokenization.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.backends.protocol import MBXP_STOP_IDS, GenerationRequest

log = logging.getLogger(__name__)

DATASET_COLUMNS = (
    "dataset", "id", "question", "input", "ref_output", "gt_output", "tok_input", "tok_ref_output",
    "stop_sequence", "tok_stop_sequence", "tok_input_len", "tok_ref_output_len",
)
VOCAB_SIZE = 32000


class DatasetError(ValueError):
    """A dataset file the harness cannot use; the message is one line naming the file."""


def _read_pickle(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found (pass --dataset-path)")
    try:
        frame = pd.read_pickle(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DatasetError(f"{path}: not a readable pandas pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(frame, pd.DataFrame):
        raise DatasetError(f"{path}: holds a {type(frame).__name__}, expected a pandas DataFrame")
    return frame


def _token_array(path: Path, row: int, column: str, value: object) -> np.ndarray:
    try:
        ids = np.asarray(value)
    except (ValueError, TypeError):
        ids = np.asarray([], dtype=object)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise DatasetError(f"{path}: row {row} column {column} is not a non-empty list of integer token ids")
    if ids.min() < 0 or ids.max() >= VOCAB_SIZE:
        raise DatasetError(f"{path}: row {row} column {column} has token ids outside [0, {VOCAB_SIZE})")
    return ids.astype(np.int32)


def load_dataset_frame(path: str | Path, total_sample_count: int | None = None) -> pd.DataFrame:
    """The first total_sample_count rows of a dataset pickle, checked for the 12-column schema."""
    return first_rows(read_dataset_file(path), path, total_sample_count)


def read_dataset_file(path: str | Path) -> pd.DataFrame:
    """Every row of a dataset pickle, checked for the 12-column schema."""
    path = Path(path)
    frame = _read_pickle(path)
    missing = [c for c in DATASET_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise DatasetError(f"{path}: the dataset has no rows")
    return frame


def first_rows(frame: pd.DataFrame, path: str | Path, total_sample_count: int | None) -> pd.DataFrame:
    if total_sample_count is not None:
        if total_sample_count < 1:
            raise DatasetError(f"{path}: --total-sample-count must be at least 1, got {total_sample_count}")
        frame = frame.iloc[:total_sample_count]
    return frame.reset_index(drop=True)


class MixtralDataset:
    """What loadgen's QSL needs: the prompts by sample index, all resident (the whole set is the
    performance sample count, so load/unload have nothing to do)."""

    def __init__(self, path: str | Path, total_sample_count: int | None = None) -> None:
        self.path = Path(path)
        whole = read_dataset_file(self.path)
        self.file_rows = len(whole)  # a submission's accuracy run must cover all of them
        frame = first_rows(whole, self.path, total_sample_count)
        self.input_ids: list[np.ndarray] = [
            _token_array(self.path, i, "tok_input", v) for i, v in enumerate(frame["tok_input"])
        ]
        self.dataset_names: list[str] = [str(name) for name in frame["dataset"]]
        log.info("Loaded %d samples from %s", len(self), self.path)

    def __len__(self) -> int:
        return len(self.input_ids)

    def stop_ids(self, index: int) -> tuple[int, ...]:
        return MBXP_STOP_IDS if self.dataset_names[index] == "MBXP" else ()

    def request(self, index: int, query_id: int = 0) -> GenerationRequest:
        return GenerationRequest(qsl_index=index, input_ids=self.input_ids[index],
                                 stop_ids=self.stop_ids(index), query_id=query_id)

    def load_samples(self, indices: Sequence[int]) -> None:
        """Nothing to load: every prompt is resident."""

    def unload_samples(self, indices: Sequence[int]) -> None:
        """Nothing to unload."""
