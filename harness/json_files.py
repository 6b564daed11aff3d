"""Reading a JSON file that a user points at, with one-line errors naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A JSON file that is absent or unreadable; the message is one line naming it."""


def read_json_file(path: Path, if_missing: str) -> Any:
    """The parsed content of `path`; `if_missing` says in the error what the file should have been."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JsonFileError(f"{path}: not found ({if_missing})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JsonFileError(f"{path}: not readable as JSON ({exc})") from None
