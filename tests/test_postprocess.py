import pytest

from harness.backends.protocol import MBXP_STOP_IDS
from harness.postprocess import cut_after_stop, find_stop_end, postprocess_output, strip_trailing

pytestmark = pytest.mark.quick

STOP = list(MBXP_STOP_IDS)


def test_all_eos_output_becomes_empty():
    assert postprocess_output([2, 2, 2]) == []
    assert postprocess_output([2, 2, 2], STOP) == []


def test_trailing_eos_and_unk_removed_in_any_mix():
    assert strip_trailing([5, 6, 2, 0, 2, 0]) == [5, 6]


def test_inner_eos_and_zeros_kept():
    assert postprocess_output([5, 2, 0, 6, 2]) == [5, 2, 0, 6]


def test_empty_output():
    assert postprocess_output([]) == []
    assert postprocess_output([], STOP) == []


def test_stop_sequence_at_start_keeps_only_it():
    assert postprocess_output(STOP + [7, 8, 2, 2], STOP) == STOP


def test_stop_sequence_in_middle_cuts_after_first_occurrence():
    ids = [9, 10] + STOP + [11] + STOP + [2]
    assert postprocess_output(ids, STOP) == [9, 10] + STOP


def test_stop_sequence_at_end_before_padding():
    assert postprocess_output([9] + STOP + [2, 2, 0], STOP) == [9] + STOP


def test_stop_sequence_absent_keeps_everything_but_padding():
    assert postprocess_output([13, 13940, 28832, 14, 2], STOP) == [13, 13940, 28832, 14]


def test_output_shorter_than_stop_sequence():
    assert postprocess_output([13, 13940, 2], STOP) == [13, 13940]
    assert cut_after_stop([13], STOP) == [13]


def test_stop_sequence_ignored_for_non_mbxp_rows():
    ids = [9] + STOP + [11]
    assert postprocess_output(ids) == ids


def test_trailing_strip_happens_before_stop_cut():
    # The stop sequence followed by EOS then the stop ids' prefix: strip first, cut second.
    assert postprocess_output([4] + STOP + [2, 13, 2], STOP) == [4] + STOP


def test_find_stop_end():
    assert find_stop_end([5, *STOP, 7, *STOP], STOP) == 5
    assert find_stop_end([5, 6, 7], STOP) is None
    assert find_stop_end([5, 6], ()) is None
    # Only stops ending at or after `start` count: the loop checks each step's new ids once.
    assert find_stop_end([*STOP, 9, *STOP], STOP, start=5) == 9
    assert find_stop_end([9, 13, 13940, 28832, 13], STOP, start=4) == 5  # straddles old and new ids
