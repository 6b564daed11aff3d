"""Which tokenizer and dataset an evaluation step reads, when flags leave them out."""

from __future__ import annotations

from pathlib import Path

from harness.tokenizer import bundled_tokenizer_model


def tokenizer_model_for(checkpoint_path: Path | None) -> Path:
    """The checkpoint's tokenizer.model, else mistral-common's copy (the same file as Mixtral's).
    ValueError names --checkpoint-path when the folder has none."""
    if checkpoint_path is None:
        return bundled_tokenizer_model()
    model = checkpoint_path / "tokenizer.model"
    if not model.is_file():
        raise ValueError(f"--checkpoint-path {checkpoint_path}: no tokenizer.model in that folder")
    return model


def dataset_or_demo(dataset_path: Path | None) -> Path:
    """The given dataset pickle, else the demo dataset (built on first use)."""
    if dataset_path is not None:
        return dataset_path
    from harness.demo import ensure_demo_assets

    return Path(ensure_demo_assets().dataset_path)
