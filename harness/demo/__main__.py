"""python -m harness.demo [--force] [--root DIR]: build the demo assets and say where they are."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from harness.demo.assets import DEMO_DIR_ENV, ensure_demo_assets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild every asset even if cached")
    parser.add_argument("--root", type=Path, default=None,
                        help=f"where to keep the assets (default: ${DEMO_DIR_ENV} or demo_assets/ in the repo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    assets = ensure_demo_assets(args.root, force=args.force)
    print(f"root:      {assets.root}")
    print(f"tokenizer: {assets.tokenizer_dir}")
    print(f"dataset:   {assets.dataset_path}")
    print(f"model:     {assets.model_dir}")


if __name__ == "__main__":
    main()
