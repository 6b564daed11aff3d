"""harness.output_dirs: a folder is created and proven writable, or one line names it."""

from pathlib import Path

import pytest

from harness.output_dirs import OutputDirError, ensure_writable_dir

pytestmark = pytest.mark.quick


def test_missing_folders_are_created_and_left_empty(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target, "--out") == target
    assert target.is_dir() and list(target.iterdir()) == []


def test_existing_content_is_kept(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{}")
    ensure_writable_dir(tmp_path, "--out")
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize(("where", "reason"), [
    ("/proc", "not writable"),  # exists, refuses new files even to root
    ("/proc/mixtral-output", "not writable"),  # cannot be created
    ("file", "not a folder"),
    ("file/sub", "not writable"),
])
def test_unusable_folder_is_named_in_one_line(tmp_path: Path, where: str, reason: str) -> None:
    (tmp_path / "file").write_text("keep me")
    target = Path(where) if where.startswith("/") else tmp_path / where
    with pytest.raises(OutputDirError) as error:
        ensure_writable_dir(target, "--out")
    message = str(error.value)
    assert message.startswith(f"--out {target}: {reason}") and "\n" not in message
    assert (tmp_path / "file").read_text() == "keep me"
