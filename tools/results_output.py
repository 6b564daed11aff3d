"""How the benchmark tools hand over their results: the table for people, JSON for machines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_results(results: dict[str, Any], table: str) -> None:
    """Print the table, then write the JSON (sorted keys) to config.output_json, or print it."""
    print(table)
    text = json.dumps(results, indent=2, sort_keys=True)
    if results["config"]["output_json"]:
        Path(results["config"]["output_json"]).write_text(text + "\n")
    else:
        print(text)
