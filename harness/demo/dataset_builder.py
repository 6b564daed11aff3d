"""The demo dataset: a few dozen rows in the exact schema of the MLPerf Mixtral 15k pickle.

OpenOrca rows are hand-written (openorca_samples.py); GSM8K and MBXP rows come from the small
subsets bundled in harness/demo/data/ (see the README there for provenance and licences).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import sentencepiece as spm

from harness.backends.protocol import MBXP_STOP_IDS
from harness.demo.openorca_samples import ORCA_SAMPLES
from harness.tokenizer import EOS_ID, reference_encode

DATA_DIR = Path(__file__).parent / "data"
GSM8K_FILE = DATA_DIR / "gsm8k_subset.jsonl"
MBXP_FILE = DATA_DIR / "mbxp_subset.jsonl"

COLUMNS = ("dataset", "id", "question", "input", "ref_output", "gt_output", "tok_input", "tok_ref_output",
           "stop_sequence", "tok_stop_sequence", "tok_input_len", "tok_ref_output_len")
MBXP_LANGUAGES = ("cpp", "python", "php", "javascript", "ruby", "typescript")
EOS_STOP = "</s>"
MBXP_STOP = "\n```\n"
ROW_ORDER_SEED = 1234
GSM8K_FEWSHOT = 2  # the first N subset problems serve as the shared few-shot examples

GSM8K_INSTRUCTION = "As an expert problem solver solve step by step the following mathematical questions."
MBXP_INSTRUCTION = "Complete the following code. Be concise, don't output anything that isn't necessary."
_CALCULATOR = re.compile(r"<<[^>]*>>")


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _row(dataset: str, id_: str, question: str, input_: str, ref_output: str, gt_output: str,
         sp: spm.SentencePieceProcessor) -> dict:
    is_mbxp = dataset == "MBXP"
    tok_input = reference_encode(sp, input_)
    tok_ref_output = sp.encode(ref_output)
    return {
        "dataset": dataset, "id": id_, "question": question, "input": input_, "ref_output": ref_output,
        "gt_output": gt_output, "tok_input": tok_input, "tok_ref_output": tok_ref_output,
        "stop_sequence": MBXP_STOP if is_mbxp else EOS_STOP,
        "tok_stop_sequence": list(MBXP_STOP_IDS) if is_mbxp else [EOS_ID],
        "tok_input_len": len(tok_input), "tok_ref_output_len": len(tok_ref_output),
    }


def openorca_rows(sp: spm.SentencePieceProcessor) -> list[dict]:
    return [_row("OpenOrca", s.id, s.question, f"<s> [INST] {s.system_prompt}\n{s.question} [/INST]", s.answer,
                 s.answer, sp) for s in ORCA_SAMPLES]


def gsm8k_solution(answer: str, final_answer: str) -> str:
    """GSM8K's solution text as one step-by-step paragraph ending "The answer is N.": calculator
    annotations and the "#### N" line removed, each step closed with a full stop."""
    steps = []
    for line in _CALCULATOR.sub("", answer).splitlines():
        line = line.strip()
        if not line or line.startswith("####"):
            continue
        steps.append(line if line[-1] in ".!?" else line + ".")
    return " ".join(steps + [f"The answer is {final_answer}."])


def gsm8k_rows(sp: spm.SentencePieceProcessor, problems: list[dict]) -> list[dict]:
    fewshot, rest = problems[:GSM8K_FEWSHOT], problems[GSM8K_FEWSHOT:]
    shots = "".join(f"Q: {p['question']}\nA: {gsm8k_solution(p['answer'], p['final_answer'])}\n\n" for p in fewshot)
    rows = []
    for p in rest:
        input_ = f"<s> [INST] {GSM8K_INSTRUCTION}\n\n{shots}Q: {p['question']}\nA: [/INST]"
        rows.append(_row("GSM8K", p["id"], p["question"], input_, gsm8k_solution(p["answer"], p["final_answer"]),
                         p["final_answer"], sp))
    return rows


def mbxp_prompt(lang: str, program: str, entry_point: str) -> str:
    """The part of an MBXP program given to the model: everything up to the function signature
    (python: through the docstring), i.e. what MBXP calls the prompt."""
    lines = program.strip("\n").split("\n")
    comment = ("*", "#", "/", ">")
    sig = next(i for i, line in enumerate(lines) if entry_point in line and not line.lstrip().startswith(comment))
    if lang == "python":
        # The docstring follows the signature: keep through its closing quotes.
        quotes = [i for i in range(sig + 1, len(lines)) if '"""' in lines[i]]
        return "\n".join(lines[: quotes[1] + 1])
    signature = lines[sig]
    if lang == "ruby":
        # Ruby solutions continue on the signature line ("def f(a)  return a"): cut after the parameters.
        signature = signature[: signature.index(")") + 1]
    return "\n".join(lines[:sig] + [signature])


def mbxp_rows(sp: spm.SentencePieceProcessor, cases: list[dict]) -> list[dict]:
    rows = []
    for c in cases:
        prompt = mbxp_prompt(c["lang"], c["response"], c["entry_point"])
        input_ = f"<s> [INST] {MBXP_INSTRUCTION}\n```{c['lang']}\n{prompt}\n``` [/INST]"
        rows.append(_row("MBXP", c["id"], prompt, input_, c["response"], c["test_code"], sp))
    return rows


def to_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """DataFrame with the real pickle's dtypes (it was written by pandas 2): object columns for
    text and token lists, int64 lengths, an object column index. pandas 3 would otherwise infer
    its own str dtype, which pandas 2 cannot unpickle."""
    rows = list(rows)
    frame = pd.DataFrame({col: pd.Series([r[col] for r in rows], dtype=object) for col in COLUMNS})
    frame.columns = pd.Index(COLUMNS, dtype=object)
    for col in ("tok_input_len", "tok_ref_output_len"):
        frame[col] = frame[col].astype("int64")
    return frame


def build_dataset(sp: spm.SentencePieceProcessor) -> pd.DataFrame:
    rows = openorca_rows(sp) + gsm8k_rows(sp, _read_jsonl(GSM8K_FILE)) + mbxp_rows(sp, _read_jsonl(MBXP_FILE))
    random.Random(ROW_ORDER_SEED).shuffle(rows)
    return to_frame(rows)
