"""What an accuracy run's answers were made from, so that --resume never mixes two runs.

A record has three parts, each compared as a whole: the dataset (its file's sha256), the model
(a checkpoint's identity, or the served model's name for the OpenAI backend) and the generation settings
that decide answers whatever the backend (greedy, min/max new tokens, EOS, stop ids, dtype).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.backends.protocol import EOS_ID, MAX_NEW_TOKENS, MBXP_STOP_IDS, MIN_NEW_TOKENS

CHUNK_BYTES = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
PART_NAMES = {"dataset": "dataset file", "model": "model", "generation": "generation settings"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _ends_sha256(path: Path) -> str:
    """sha256 of a file's first and last MiB with its size: reading 93 GB of weights would take
    minutes, and any other checkpoint (a retrained one included) differs there."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle:
        digest.update(handle.read(CHUNK_BYTES))
        handle.seek(max(size - CHUNK_BYTES, 0))
        digest.update(handle.read(CHUNK_BYTES))
    return digest.hexdigest()


def checkpoint_identity(model_dir: Path) -> dict[str, Any]:
    """config.json's sha256 and, per weight file, its size and the sha256 of its two ends."""
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return {"config_sha256": file_sha256(model_dir / "config.json"),
            "weights": {p.name: [p.stat().st_size, _ends_sha256(p)] for p in weights}}


def generation_settings(dtype: str) -> dict[str, Any]:
    return {"greedy": True, "min_new_tokens": MIN_NEW_TOKENS, "max_new_tokens": MAX_NEW_TOKENS, "eos_id": EOS_ID,
            "mbxp_stop_ids": list(MBXP_STOP_IDS), "dtype": dtype}


def run_record(dataset_path: Path, model: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """The record of a run; every value is plain JSON, so that a record read back compares equal."""
    record = {"dataset": {"sha256": file_sha256(dataset_path)}, "model": dict(model),
              "generation": generation_settings(dtype)}
    return json.loads(json.dumps(record))


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One phrase per part that differs, naming what changed (empty: the same run)."""
    found = []
    for part, name in PART_NAMES.items():
        old, new = recorded.get(part), current.get(part)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            changes = ", ".join(f"{k}: {_short(old.get(k))} then, {_short(new.get(k))} now" for k in keys)
            found.append(f"{name} ({changes})")
        else:
            found.append(name)
    return found


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:20] + "..."
