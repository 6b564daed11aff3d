"""Reading mlperf_log_accuracy.json: dtypes, repeated samples, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.evaluation.accuracy_log import (
    AccuracyLogError,
    decode_entry_data,
    encode_entry_data,
    parse_accuracy_entries,
    read_accuracy_log,
)

pytestmark = pytest.mark.quick


def _entry(qsl_idx: int, ids: list[int], dtype: str = "int32", seq_id: int = 0) -> dict:
    return {"seq_id": seq_id, "qsl_idx": qsl_idx, "data": encode_entry_data(ids, dtype), "token_count": len(ids)}


def test_hex_is_loadgen_style_little_endian() -> None:
    assert encode_entry_data([1, 2, 28705], "int32") == "010000000200000021700000"
    assert encode_entry_data([1], "int64") == "0100000000000000"
    assert encode_entry_data([2], "float") == "00000040"  # 2.0f
    assert encode_entry_data([31999], "int32") == "FF7C0000"  # uppercase hex, as loadgen writes


@pytest.mark.parametrize("dtype", ["int32", "int64", "float"])
def test_each_dtype_round_trips(dtype: str) -> None:
    ids = [330, 1, 28705, 31999, 2]
    log = parse_accuracy_entries([_entry(3, ids, dtype)], dtype, dataset_size=4)
    assert log.outputs == {3: ids}
    assert all(type(i) is int for i in log.outputs[3])


def test_float_is_numpy_float32() -> None:
    values = decode_entry_data(encode_entry_data([7, 8], "float"), "float")
    assert values.dtype == np.float32


def test_first_entry_of_a_qsl_idx_counts_repeats_are_counted_in_entry_count() -> None:
    entries = [_entry(1, [5, 6]), _entry(0, [7]), _entry(1, [9, 9, 9]), _entry(1, [4])]
    log = parse_accuracy_entries(entries, "int32", dataset_size=2)
    assert log.outputs == {1: [5, 6], 0: [7]}
    assert list(log.outputs) == [1, 0]  # log order kept
    assert log.entry_count == 4
    assert log.duplicate_count == 2


def test_empty_response_is_allowed() -> None:
    assert parse_accuracy_entries([_entry(0, [])], "int32").outputs == {0: []}


def _error(entries: object, dtype: str = "int32", **kwargs: object) -> str:
    with pytest.raises(AccuracyLogError) as info:
        parse_accuracy_entries(entries, dtype, source="log.json", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_int64_log_read_as_int32_names_the_flag() -> None:
    message = _error([_entry(0, [5, 6, 7], "int64")], "int32")
    assert message == ("log.json: entry 0 (qsl_idx 0): holds 6 int32 values but token_count is 3; "
                       "the log looks written as int64: use --dtype int64")


def test_int32_log_read_as_int64_names_the_flag() -> None:
    assert _error([_entry(0, [5, 6], "int32")], "int64").endswith("use --dtype int32")
    odd = _error([_entry(0, [5, 6, 7], "int32")], "int64")
    assert "12 bytes is not a whole number of int64 values" in odd


def test_float_and_int_mixups_are_caught_by_value_checks() -> None:
    assert "non-integral" in _error([_entry(0, [5, 6], "int32")], "float")
    assert "outside the vocabulary [0, 32000)" in _error([_entry(0, [5, 6], "float")], "int32", vocab_size=32000)


def test_qsl_idx_outside_the_dataset() -> None:
    assert _error([_entry(5, [1])], dataset_size=5) == (
        "log.json: entry 0: qsl_idx 5 is outside the dataset of 5 rows: "
        "is --dataset-file the dataset this log was produced with?")
    assert "outside the dataset" in _error([_entry(-1, [1])], dataset_size=5)


@pytest.mark.parametrize(("entries", "expected"), [
    ({"qsl_idx": 0}, "expected a JSON list of entries, found dict"),
    ([[1, 2]], "entry 0 is not a JSON object"),
    ([{"qsl_idx": 0}], "entry 0 lacks key(s) data"),
    ([{"data": "00"}], "entry 0 lacks key(s) qsl_idx"),
    ([{"qsl_idx": "0", "data": "00"}], "qsl_idx '0' is not an integer"),
    ([{"qsl_idx": 0, "data": "XYZ"}], "non-hexadecimal"),
])
def test_malformed_entries(entries: object, expected: str) -> None:
    assert expected in _error(entries)


def test_unknown_dtype() -> None:
    assert "unknown --dtype 'int8'" in _error([], "int8")


def test_read_accuracy_log_file_errors(tmp_path: Path) -> None:
    with pytest.raises(AccuracyLogError, match="accuracy log not found"):
        read_accuracy_log(tmp_path / "absent.json")
    truncated = tmp_path / "truncated.json"
    truncated.write_text('[\n{"seq_id": 0, "qsl_idx": 0, "data": "01000000"', encoding="utf-8")
    with pytest.raises(AccuracyLogError, match=r"malformed JSON at line 2 .*was the run interrupted\?"):
        read_accuracy_log(truncated)


def test_read_accuracy_log_reads_loadgen_json(tmp_path: Path) -> None:
    path = tmp_path / "mlperf_log_accuracy.json"
    path.write_text(json.dumps([_entry(0, [1, 2, 3]), _entry(1, [4])]), encoding="utf-8")
    log = read_accuracy_log(path, "int32", dataset_size=2, vocab_size=32000)
    assert log.outputs == {0: [1, 2, 3], 1: [4]}


def test_token_count_mismatch_alone_is_scored_as_the_reference_does(tmp_path):
    # The reference never reads token_count; only a length that fits another dtype is an error.
    entry = {"seq_id": 0, "qsl_idx": 0, "data": encode_entry_data([5, 6, 7]), "token_count": 2}
    path = tmp_path / "log.json"
    path.write_text(json.dumps([entry]))
    assert read_accuracy_log(path, "int32", dataset_size=1).outputs == {0: [5, 6, 7]}
