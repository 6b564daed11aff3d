"""python -m harness.demo [--force] [--root DIR] [--verify]: build the demo assets and say where
they are; --verify also greedy-generates every dataset row and counts exact reproductions."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from harness.demo.assets import DEMO_DIR_ENV, DemoAssets, ensure_demo_assets


def verify(assets: DemoAssets) -> str:
    """One line summarising how well the model reproduces its dataset."""
    import pandas as pd
    import torch
    from transformers import MixtralForCausalLM

    from harness.demo.verify import check_rows

    model = MixtralForCausalLM.from_pretrained(assets.model_dir, dtype=torch.float32).eval()
    checks = check_rows(model, pd.read_pickle(assets.dataset_path))
    mbxp = [c for c in checks if c.dataset == "MBXP"]
    missed = ", ".join(c.id for c in checks if not c.exact) or "none"
    return (f"exact: {sum(c.exact for c in checks)}/{len(checks)} rows, EOS: {sum(c.ends_with_eos for c in checks)}, "
            f"MBXP stop ids: {sum(c.has_stop_ids for c in mbxp)}/{len(mbxp)}; not exact: {missed}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild every asset even if cached")
    parser.add_argument("--root", type=Path, default=None,
                        help=f"where to keep the assets (default: ${DEMO_DIR_ENV} or demo_assets/ in the repo)")
    parser.add_argument("--verify", action="store_true",
                        help="greedy-generate every row and report exact reproductions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    assets = ensure_demo_assets(args.root, force=args.force)
    print(f"root:      {assets.root}")
    print(f"tokenizer: {assets.tokenizer_dir}")
    print(f"dataset:   {assets.dataset_path}")
    print(f"model:     {assets.model_dir}")
    if args.verify:
        print(f"verify:    {verify(assets)}")


if __name__ == "__main__":
    main()
