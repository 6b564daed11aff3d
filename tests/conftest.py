"""Shared fixtures: the demo assets (tokenizer folder, sample dataset, tiny trained Mixtral) and what
the evaluation tests build on them."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from harness.demo import DemoAssets, ensure_demo_assets


@pytest.fixture(scope="session")
def demo_assets() -> DemoAssets:
    """The cached demo assets, built on first use (a couple of minutes on two CPU cores)."""
    return ensure_demo_assets()


@pytest.fixture(scope="module")
def frame(demo_assets) -> pd.DataFrame:
    """The demo dataset as a DataFrame."""
    return pd.read_pickle(demo_assets.dataset_path)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for evaluation subprocesses, with their own punkt tables folder."""
    return {**os.environ, "MIXTRAL_HARNESS_NLTK_DATA": str(tmp_path_factory.mktemp("nltk_data"))}
