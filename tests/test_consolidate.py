"""consolidate_results.py: a run's journal merged into the dataset, every row exactly once."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

from harness.evaluation.consolidation import ConsolidationError, collect_outputs, strip_trailing_eos
from harness.evaluation.sentences import install_punkt_tab, rouge_ready
from harness.postprocess import postprocess_output
from harness.tokenizer import bundled_tokenizer_model, load_sentencepiece, reference_decode

ROOT = Path(__file__).resolve().parents[1]
CONSOLIDATE = ROOT / "consolidate_results.py"


def write_journal(folder: Path, frame: pd.DataFrame, batch: int = 5, as_numpy: bool = True) -> Path:
    """run_outputs/q<indices>.pkl files holding the reference answers, in batches, as the SUT
    journals them (numpy arrays like the reference, or lists like ours), with a trailing EOS."""
    folder.mkdir(parents=True, exist_ok=True)
    indices = list(range(len(frame)))
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        outputs = [postprocess_output(list(frame.at[i, "tok_ref_output"])) + [2] for i in chunk]
        if as_numpy:
            outputs = [np.asarray(ids, dtype=np.int32) for ids in outputs]
        with open(folder / f"q{'_'.join(map(str, chunk))}.pkl", "wb") as f:
            pickle.dump({"query_ids": chunk, "outputs": outputs}, f)
    return folder


def consolidate(demo_assets, env: dict[str, str], run_outputs: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CONSOLIDATE), "--dataset-path", str(demo_assets.dataset_path),
                           "--run-outputs", str(run_outputs), "--output-pkl-path", str(out), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("as_numpy", [True, False])
def test_consolidation_of_a_journal(demo_assets, frame: pd.DataFrame, env: dict[str, str], tmp_path: Path,
                                    as_numpy: bool) -> None:
    run_outputs = write_journal(tmp_path / "run_outputs", frame, as_numpy=as_numpy)
    proc = consolidate(demo_assets, env, run_outputs, tmp_path / "out" / "full_output.pkl")
    assert proc.returncode == 0, proc.stderr
    merged = pd.read_pickle(tmp_path / "out" / "full_output.pkl")
    assert list(merged.columns) == [*frame.columns, "gen_output_tok_id", "gen_output_text", "gen_output_tok_len",
                                    "rouge1", "rouge2", "rougeL"]
    sp = load_sentencepiece(bundled_tokenizer_model())
    install_punkt_tab(env["MIXTRAL_HARNESS_NLTK_DATA"])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for i, row in merged.iterrows():
        expected_ids = postprocess_output(list(frame.at[i, "tok_ref_output"]))
        assert row.gen_output_tok_id == expected_ids
        assert all(type(t) is int for t in row.gen_output_tok_id)
        assert row.gen_output_text == reference_decode(sp, expected_ids)
        assert row.gen_output_tok_len == len(expected_ids)
        score = scorer.score(rouge_ready(frame.at[i, "gt_output"]), rouge_ready(row.gen_output_text))
        assert (row.rouge1, row.rouge2, row.rougeL) == (score["rouge1"].fmeasure, score["rouge2"].fmeasure,
                                                        score["rougeL"].fmeasure)
    # The demo's OpenOrca targets are its reference answers, so those rows score exactly 1.
    assert (merged.loc[merged.dataset == "OpenOrca", "rouge1"] == 1.0).all()


def _error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_and_duplicated_rows_are_named(demo_assets, frame: pd.DataFrame, env: dict[str, str],
                                               tmp_path: Path) -> None:
    run_outputs = write_journal(tmp_path / "run_outputs", frame)
    (run_outputs / "q0_1_2_3_4.pkl").unlink()
    message = _error(consolidate(demo_assets, env, run_outputs, tmp_path / "full_output.pkl"))
    assert message == "consolidate_results.py: error: rows without an output: 0, 1, 2, 3, 4"
    with open(run_outputs / "q3_9.pkl", "wb") as f:
        pickle.dump({"query_ids": [0, 1, 2, 3, 4, 9], "outputs": [[330]] * 6}, f)
    message = _error(consolidate(demo_assets, env, run_outputs, tmp_path / "full_output.pkl"))
    assert message.endswith("rows with more than one output: 9 (q3_9.pkl and q5_6_7_8_9.pkl)")
    assert not (tmp_path / "full_output.pkl").exists()


def test_bad_journal_folders(demo_assets, env: dict[str, str], tmp_path: Path) -> None:
    assert "run outputs folder not found" in _error(consolidate(demo_assets, env, tmp_path / "none", tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    assert "no q*.pkl journal files" in _error(consolidate(demo_assets, env, tmp_path / "empty", tmp_path / "o"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "q0.pkl").write_bytes(b"not a pickle")
    message = _error(consolidate(demo_assets, env, tmp_path / "bad", tmp_path / "o"))
    assert "q0.pkl: not a run_outputs batch file" in message


def test_unwritable_output_folder_stops_before_reading(demo_assets, env: dict[str, str], tmp_path: Path) -> None:
    # The journal folder does not exist either: the output folder is named, so it was checked first.
    proc = consolidate(demo_assets, env, tmp_path / "none", Path("/proc/consolidated/full_output.pkl"))
    assert proc.returncode == 2
    assert _error(proc).startswith("consolidate_results.py: error: --output-pkl-path /proc/consolidated: ")


def test_collect_outputs_errors() -> None:
    with pytest.raises(ConsolidationError, match="q7.pkl: qsl index 7 is outside the dataset of 2 rows"):
        collect_outputs([("q7.pkl", {7: [5]})], 2)
    with pytest.raises(ConsolidationError, match=r"rows with more than one output: 0 \(q0.pkl and q0_1.pkl\)"):
        collect_outputs([("q0.pkl", {0: [5]}), ("q0_1.pkl", {0: [5], 1: [6]})], 2)
    missing = ", ".join(str(i) for i in range(1, 11))
    with pytest.raises(ConsolidationError, match=f"rows without an output: {missing}, ... \\(11 in all\\)"):
        collect_outputs([("q0.pkl", {0: [5]})], 12)


@pytest.mark.parametrize("content, problem", [
    ({"query_ids": [0, 1], "outputs": [[5]]}, "2 query_ids but 1 outputs"),
    ([[5]], "not a run_outputs batch file"),
    ({"query_ids": ["zero"], "outputs": [[5]]}, "expected integers, found str 'zero'"),
    ({"query_ids": [0], "outputs": [[5, 1.5]]}, "expected integers, found float 1.5"),
    ({"query_ids": [0], "outputs": [7]}, "corrupt run_outputs batch file"),
    ({"query_ids": [0, 0], "outputs": [[5], [5]]}, "a qsl index appears twice"),
])
def test_hand_made_journal_files_are_named_as_corrupt(demo_assets, env: dict[str, str], tmp_path: Path,
                                                      content: object, problem: str) -> None:
    run_outputs = tmp_path / "run_outputs"
    run_outputs.mkdir()
    with open(run_outputs / "q0.pkl", "wb") as f:
        pickle.dump(content, f)
    proc = consolidate(demo_assets, env, run_outputs, tmp_path / "full_output.pkl")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert _error(proc).startswith(f"consolidate_results.py: error: {run_outputs / 'q0.pkl'}: ")
    assert problem in _error(proc)


def test_strip_trailing_eos() -> None:
    assert strip_trailing_eos([5, 2, 6, 2, 2]) == [5, 2, 6]
    assert strip_trailing_eos([2, 2]) == []
    stripped = strip_trailing_eos(np.array([7, 0, 2], dtype=np.int32))
    assert stripped == [7, 0] and all(type(i) is int for i in stripped)


def test_run_accuracy_script_end_to_end(demo_assets, env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "run_accuracy.sh")], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "OUTPUT_DIR": str(tmp_path)}, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Accuracy against the official targets" in proc.stdout
    for name in ("mlperf_log_accuracy.json", "results.json", "accuracy.txt", "full_output.pkl"):
        assert (tmp_path / name).is_file(), name
    merged = pd.read_pickle(tmp_path / "full_output.pkl")
    assert merged["gen_output_tok_len"].min() >= 1
