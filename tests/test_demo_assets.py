from __future__ import annotations

import json
import pickletools
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import MixtralForCausalLM

from harness.backends.protocol import MBXP_STOP_IDS
from harness.demo import DemoAssets, ensure_demo_assets
from harness.demo.assets import _write_atomically
from harness.demo.dataset_builder import COLUMNS, MBXP_LANGUAGES, gsm8k_solution, mbxp_prompt
from harness.demo.verify import check_rows
from harness.tokenizer import bundled_tokenizer_model, load_sentencepiece, reference_encode

INST_PREFIX = [1, 1, 28705, 733, 16289, 28793]  # "<s>" + "<s> [INST]"


@pytest.fixture(scope="module")
def dataset(demo_assets: DemoAssets) -> pd.DataFrame:
    return pd.read_pickle(demo_assets.dataset_path)


@pytest.fixture(scope="module")
def model(demo_assets: DemoAssets) -> MixtralForCausalLM:
    return MixtralForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.float32).eval()


def test_columns_and_dtypes(dataset: pd.DataFrame) -> None:
    assert tuple(dataset.columns) == COLUMNS
    for col in COLUMNS:
        expected = "int64" if col.endswith("_len") else "object"
        assert str(dataset[col].dtype) == expected, col
    for col in ("tok_input", "tok_ref_output", "tok_stop_sequence"):
        assert all(isinstance(v, list) and all(type(i) is int for i in v) for v in dataset[col]), col
    for col in ("dataset", "id", "question", "input", "ref_output", "gt_output", "stop_sequence"):
        assert all(type(v) is str for v in dataset[col]), col


def test_pickle_holds_plain_objects_only(demo_assets: DemoAssets, dataset: pd.DataFrame) -> None:
    """pandas 2, which wrote the real MLCommons pickle and which users may run, cannot unpickle pandas
    3's string arrays ("NotImplementedError: StringDtype(storage='python')"): the demo pickle, like
    the real one, must name no pandas extension array or dtype, its column index included."""
    assert dataset.columns.dtype == object
    with demo_assets.dataset_path.open("rb") as handle:
        names = {arg for _op, arg, _pos in pickletools.genops(handle) if isinstance(arg, str) and len(arg) < 64}
    assert not {n for n in names if "Dtype" in n or "Array" in n or n.startswith("pandas.arrays")}
    assert {n for n in names if n.startswith("pandas")} <= {
        "pandas", "pandas._libs.internals", "pandas.core.indexes.base", "pandas.core.indexes.range",
        "pandas.core.internals.managers"}


def test_row_counts_and_languages(dataset: pd.DataFrame) -> None:
    assert dataset["dataset"].value_counts().to_dict() == {"OpenOrca": 12, "GSM8K": 12, "MBXP": 12}
    mbxp = dataset[dataset["dataset"] == "MBXP"]
    langs = mbxp["id"].str.split("_").str[0]
    assert langs.value_counts().to_dict() == dict.fromkeys(MBXP_LANGUAGES, 2)
    assert dataset["id"].is_unique
    # interleaved, not grouped by dataset
    assert dataset["dataset"].iloc[:12].nunique() == 3


def test_token_columns(dataset: pd.DataFrame) -> None:
    sp = load_sentencepiece(bundled_tokenizer_model())
    for _, row in dataset.iterrows():
        assert row["tok_input"][:6] == INST_PREFIX
        assert row["tok_input"] == reference_encode(sp, row["input"])
        assert row["tok_ref_output"] == sp.encode(row["ref_output"])
        assert row["tok_input_len"] == len(row["tok_input"]) < 600
        assert row["tok_ref_output_len"] == len(row["tok_ref_output"]) < 200


def test_stop_sequences(dataset: pd.DataFrame) -> None:
    for _, row in dataset.iterrows():
        if row["dataset"] == "MBXP":
            assert row["stop_sequence"] == "\n```\n"
            assert row["tok_stop_sequence"] == list(MBXP_STOP_IDS)
            assert row["ref_output"].endswith("\n```\n")
            assert tuple(row["tok_ref_output"][-4:]) == MBXP_STOP_IDS
        else:
            assert (row["stop_sequence"], row["tok_stop_sequence"]) == ("</s>", [2])


def test_gsm8k_rows(dataset: pd.DataFrame) -> None:
    gsm = dataset[dataset["dataset"] == "GSM8K"]
    for _, row in gsm.iterrows():
        assert row["id"].startswith("train.")
        assert row["input"].startswith("<s> [INST] As an expert problem solver solve step by step")
        assert row["input"].endswith(f"Q: {row['question']}\nA: [/INST]")
        assert row["ref_output"].endswith(f"The answer is {row['gt_output']}.")
        assert "<<" not in row["ref_output"] and "####" not in row["ref_output"]


def test_gsm8k_solution() -> None:
    answer = "He buys 2*3=<<2*3=6>>6 apples\nThen he eats 1.\n#### 5"
    assert gsm8k_solution(answer, "5") == "He buys 2*3=6 apples. Then he eats 1. The answer is 5."


def test_mbxp_prompt() -> None:
    ruby = "\n\n# Doc\n# irb> f(1)\ndef f(a)  return a\n\nend\n\n```\n"
    assert mbxp_prompt("ruby", ruby, "f") == "# Doc\n# irb> f(1)\ndef f(a)"
    python = '\ndef f(a):\n  """\n  >>> f(1)\n  1\n  """\n  return a\n```\n'
    assert mbxp_prompt("python", python, "f") == 'def f(a):\n  """\n  >>> f(1)\n  1\n  """'


def test_model_config(demo_assets: DemoAssets) -> None:
    config = json.loads((demo_assets.model_dir / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["vocab_size"]) == (8, 2, 32000)
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    generation = json.loads((demo_assets.model_dir / "generation_config.json").read_text())
    assert generation["pad_token_id"] == 2
    for name in ("model.safetensors", "tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        assert (demo_assets.model_dir / name).is_file()


def test_greedy_generation_emits_eos_and_stop_ids(model: MixtralForCausalLM, dataset: pd.DataFrame) -> None:
    rows = pd.concat([dataset[dataset["dataset"] == d].head(2) for d in ("OpenOrca", "GSM8K", "MBXP")])
    checks = check_rows(model, rows)
    assert all(c.ends_with_eos for c in checks)
    assert any(c.has_stop_ids for c in checks if c.dataset == "MBXP")
    assert sum(c.exact for c in checks) >= 3


def test_second_build_is_a_cache_hit(demo_assets: DemoAssets) -> None:
    mtime = (demo_assets.model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_assets() == demo_assets
    assert (demo_assets.model_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "asset"

    def half_write(path: Path) -> None:
        path.mkdir()
        (path / "part").write_text("half")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        _write_atomically(target, half_write)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_old_asset(tmp_path: Path) -> None:
    target = tmp_path / "asset.txt"
    target.write_text("old")
    _write_atomically(target, lambda p: p.write_text("new"))
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["asset.txt"]
