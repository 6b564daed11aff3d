import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dataset import DATASET_COLUMNS, MixtralDataset
from harness.backends.protocol import EOS_ID, MBXP_STOP_IDS
from tools.synth_dataset import PROMPT_PREFIX, SCORED_LANGUAGES, synth_frame

pytestmark = pytest.mark.quick

REPO = Path(__file__).resolve().parents[1]


def test_cli_writes_a_frame_of_the_real_schema(tmp_path):
    out = tmp_path / "synth.pkl"
    subprocess.run([sys.executable, "-m", "tools.synth_dataset", "--output", str(out), "--rows", "300", "--seed", "3"],
                   cwd=REPO, check=True, capture_output=True)
    frame = pd.read_pickle(out)

    assert tuple(frame.columns) == DATASET_COLUMNS
    assert len(frame) == 300
    assert frame["dataset"].value_counts().to_dict() == {"OpenOrca": 100, "GSM8K": 100, "MBXP": 100}
    for col in DATASET_COLUMNS:
        expected = "int64" if col.endswith("_len") else "object"
        assert str(frame[col].dtype) == expected, col
    for row in frame.itertuples():
        assert all(type(i) is int for i in row.tok_input + row.tok_ref_output)
        assert tuple(row.tok_input[:6]) == PROMPT_PREFIX
        assert all(3 <= i < 32000 for i in row.tok_input[6:])
        assert row.tok_input_len == len(row.tok_input) <= 2048
        assert row.tok_ref_output_len == len(row.tok_ref_output)
    assert len(MixtralDataset(out)) == 300  # the harness's own loader accepts it


def test_stop_sequences_and_ids_follow_the_spec():
    frame = synth_frame(300, seed=0)
    mbxp = frame[frame["dataset"] == "MBXP"]
    other = frame[frame["dataset"] != "MBXP"]
    assert (mbxp["stop_sequence"] == "\n```\n").all()
    assert all(s == list(MBXP_STOP_IDS) for s in mbxp["tok_stop_sequence"])
    assert (other["stop_sequence"] == "</s>").all()
    assert all(s == [EOS_ID] for s in other["tok_stop_sequence"])
    languages = {i.rsplit("_f", 1)[0] for i in mbxp["id"]}
    assert set(SCORED_LANGUAGES) <= languages and languages - set(SCORED_LANGUAGES)
    assert frame[frame["dataset"] == "GSM8K"]["id"].str.fullmatch(r"train\.\d+").all()


def test_same_seed_same_frame_and_realistic_mean_output():
    a, b = synth_frame(3000, seed=7), synth_frame(3000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert 130 <= a["tok_ref_output_len"].mean() <= 160
