"""Shared fixtures: the demo assets (tokenizer folder, sample dataset, tiny trained Mixtral) and what
the evaluation tests build on them."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from harness.demo import DemoAssets, ensure_demo_assets
from tests.run_helpers import answers_by_index, run_main


@pytest.fixture(scope="session")
def demo_assets() -> DemoAssets:
    """The cached demo assets, built on first use (a couple of minutes on two CPU cores)."""
    return ensure_demo_assets()


@pytest.fixture(scope="session")
def hf_offline_answers(tmp_path_factory: pytest.TempPathFactory, demo_assets: DemoAssets) -> dict[int, list[int]]:
    """The HF backend's answers on every demo row (an Offline accuracy run of main.py on static
    batches, the reference's path), which the other backends must equal token for token."""
    out = tmp_path_factory.mktemp("hf_offline")
    result = run_main("--scenario", "Offline", "--accuracy", "--batching", "static", "--batch-size", "8",
                      "--output-log-dir", str(out), cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return answers_by_index(out)


@pytest.fixture(scope="module")
def frame(demo_assets) -> pd.DataFrame:
    """The demo dataset as a DataFrame."""
    return pd.read_pickle(demo_assets.dataset_path)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for evaluation subprocesses, with their own punkt tables folder."""
    return {**os.environ, "MIXTRAL_HARNESS_NLTK_DATA": str(tmp_path_factory.mktemp("nltk_data"))}
