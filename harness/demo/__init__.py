"""Demo assets: the real Mixtral tokenizer, a small dataset in the real schema and a tiny trained
Mixtral, built offline and cached so the harness runs end to end without the real model."""

from harness.demo.assets import DEMO_DIR_ENV, DemoAssets, default_root, ensure_demo_assets

__all__ = ["DEMO_DIR_ENV", "DemoAssets", "default_root", "ensure_demo_assets"]
