"""Shared fixtures for the demo assets (tokenizer folder, sample dataset, tiny trained Mixtral)."""

from __future__ import annotations

import pytest

from harness.demo import DemoAssets, ensure_demo_assets


@pytest.fixture(scope="session")
def demo_assets() -> DemoAssets:
    """The cached demo assets, built on first use (a couple of minutes on two CPU cores)."""
    return ensure_demo_assets()
