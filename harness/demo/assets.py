"""Build and cache the demo assets (tokenizer folder, sample dataset, tiny trained Mixtral).

Each asset is written under a temporary name and renamed into place, so an asset that exists is
complete; manifest.json, written last, marks the whole set as built by this version of the code.
An fcntl lock serialises builders across processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.demo.dataset_builder import build_dataset
from harness.demo.model_builder import save_checkpoint, train_demo_model
from harness.tokenizer import bundled_tokenizer_model, load_sentencepiece, save_tokenizer

log = logging.getLogger(__name__)

DEMO_DIR_ENV = "MIXTRAL_DEMO_DIR"
# Bump when the builders change what they produce: older caches are then rebuilt.
ASSETS_VERSION = 3
MANIFEST = "manifest.json"
LOCK = ".build.lock"


@dataclass(frozen=True)
class DemoAssets:
    root: Path
    tokenizer_dir: Path
    dataset_path: Path
    model_dir: Path

    @classmethod
    def at(cls, root: Path) -> DemoAssets:
        return cls(root=root, tokenizer_dir=root / "tokenizer", dataset_path=root / "dataset.pkl",
                   model_dir=root / "model")


def default_root() -> Path:
    """$MIXTRAL_DEMO_DIR, else demo_assets/ at the repository root."""
    env = os.environ.get(DEMO_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "demo_assets"


def _manifest_version(root: Path) -> int | None:
    try:
        return json.loads((root / MANIFEST).read_text()).get("version")
    except (OSError, ValueError):
        return None


def _complete(assets: DemoAssets) -> bool:
    paths = (assets.tokenizer_dir, assets.dataset_path, assets.model_dir)
    return _manifest_version(assets.root) == ASSETS_VERSION and all(p.exists() for p in paths)


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    with (root / LOCK).open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename tmp to target, replacing any old target."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        write(tmp)
    except BaseException:
        _remove(tmp)
        raise
    _remove(target)
    tmp.rename(target)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _build_tokenizer(out_dir: Path) -> None:
    save_tokenizer(bundled_tokenizer_model(), out_dir)


def _build_dataset(path: Path) -> None:
    build_dataset(load_sentencepiece(bundled_tokenizer_model())).to_pickle(path)


def _build_model(dataset_path: Path, out_dir: Path) -> None:
    model = train_demo_model(pd.read_pickle(dataset_path))
    save_checkpoint(model, bundled_tokenizer_model(), out_dir)


def ensure_demo_assets(root: Path | None = None, force: bool = False) -> DemoAssets:
    """Return the demo assets under root (default: default_root()), building whatever is missing,
    or everything when force is set or the cache was made by another ASSETS_VERSION."""
    assets = DemoAssets.at(Path(root) if root is not None else default_root())
    if not force and _complete(assets):
        return assets
    assets.root.mkdir(parents=True, exist_ok=True)
    with _build_lock(assets.root):
        # Another process may have finished the build while this one waited for the lock.
        if not force and _complete(assets):
            return assets
        # A cache made by another version of the builders is rebuilt whole.
        rebuild = force or _manifest_version(assets.root) not in (None, ASSETS_VERSION)
        (assets.root / MANIFEST).unlink(missing_ok=True)
        start = time.perf_counter()
        steps: list[tuple[str, Path, Callable[[Path], None]]] = [
            ("tokenizer", assets.tokenizer_dir, _build_tokenizer),
            ("dataset", assets.dataset_path, _build_dataset),
            ("model", assets.model_dir, lambda p: _build_model(assets.dataset_path, p)),
        ]
        for name, path, write in steps:
            if rebuild or not path.exists():
                log.info("building demo %s at %s", name, path)
                _write_atomically(path, write)
                # The model is trained on the dataset: a new dataset means a new model.
                rebuild = rebuild or name == "dataset"
        manifest = {"version": ASSETS_VERSION, "build_seconds": round(time.perf_counter() - start, 1)}
        _write_atomically(assets.root / MANIFEST, lambda p: p.write_text(json.dumps(manifest, sort_keys=True)))
        log.info("demo assets ready in %s", assets.root)
    return assets
