"""Every layout of TRL's dataset-format table (standard and conversational) loads for the
objective it suits, and is refused by name for the one it does not; a refused row names its file,
row and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from elmforge.errors import DataError
from elmforge.finetune.data import load_preference_rows, load_sft_rows
from tests.finetune.conftest import write_jsonl

USER = {"role": "user", "content": "What colour is the sky?"}
ANSWER = {"role": "assistant", "content": "Blue."}
WRONG = {"role": "assistant", "content": "Green."}

# TRL's table, https://huggingface.co/docs/trl/dataset_formats: one row of each layout.
LAYOUTS = {
    "standard language modeling": {"text": "The sky is blue."},
    "conversational language modeling": {"messages": [USER, ANSWER]},
    "standard prompt-only": {"prompt": "The sky is"},
    "conversational prompt-only": {"prompt": [USER]},
    "standard prompt-completion": {"prompt": "The sky is", "completion": " blue."},
    "conversational prompt-completion": {"prompt": [USER], "completion": [ANSWER]},
    "standard preference": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "conversational preference": {"prompt": [USER], "chosen": [ANSWER], "rejected": [WRONG]},
    "standard implicit preference": {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    "conversational implicit preference": {"chosen": [USER, ANSWER], "rejected": [USER, WRONG]},
    "standard unpaired preference": {"prompt": "The sky is", "completion": " blue.", "label": True},
    "conversational unpaired preference": {"prompt": [USER], "completion": [ANSWER], "label": True},
    "standard stepwise supervision": {"prompt": "2+2=", "completions": ["4"], "labels": [True]},
}
SFT_OK = {k for k in LAYOUTS if "language" in k or "completion" in k or "unpaired" in k}
DPO_OK = {k for k in LAYOUTS if "preference" in k and "unpaired" not in k}
REFUSED_BY_NAME = {
    "prompt-only": "prompt-only rows",
    "stepwise": "stepwise-supervision rows",
    "unpaired": "unpaired-preference rows",
    "preference": "are for `elmforge finetune dpo`",
    "other": "DPO needs preference rows",
}


def _refusal(layout: str, objective: str) -> str:
    for key in ("prompt-only", "stepwise"):
        if key in layout:
            return REFUSED_BY_NAME[key]
    if objective == "dpo":
        return REFUSED_BY_NAME["unpaired" if "unpaired" in layout else "other"]
    return REFUSED_BY_NAME["preference"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_every_trl_layout_loads_or_is_refused_by_name(
    tmp_path: Path, layout: str, objective: str
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [LAYOUTS[layout]] * 2)
    accepted = SFT_OK if objective == "sft" else DPO_OK
    if layout in accepted:
        rows = load_sft_rows(path)[0] if objective == "sft" else load_preference_rows(path)
        assert len(rows) == 2
        return
    loader = load_sft_rows if objective == "sft" else load_preference_rows
    with pytest.raises(DataError) as err:
        loader(path)
    assert str(path) in str(err.value) and _refusal(layout, objective) in str(err.value)


def test_preference_rows_split_alike_whatever_the_layout(tmp_path: Path) -> None:
    def load(layout: str):
        (pair,) = load_preference_rows(write_jsonl(tmp_path / "p.jsonl", [LAYOUTS[layout]]))
        return pair

    explicit, implicit = (
        load("conversational preference"),
        load("conversational implicit preference"),
    )
    assert explicit.prompt == implicit.prompt == (USER,)
    assert explicit.chosen == implicit.chosen == (ANSWER,)
    assert explicit.rejected == implicit.rejected == (WRONG,)
    text, implicit_text = load("standard preference"), load("standard implicit preference")
    assert (text.prompt, text.chosen, text.rejected) == ("The sky is", " blue.", " green.")
    # TRL's extract_prompt: the space before the split stays with the completions.
    assert (implicit_text.prompt, implicit_text.chosen) == ("The sky is", " blue.")
    assert implicit_text.rejected == " green."


def test_sft_rows_of_each_layout(tmp_path: Path) -> None:
    def load(layout: str, rows=None):
        return load_sft_rows(write_jsonl(tmp_path / "s.jsonl", rows or [LAYOUTS[layout]]))

    (row,), kind = load("standard language modeling")
    assert kind == "language-modeling" and (row.prompt, row.completion) == ("", "The sky is blue.")
    (row,), kind = load("conversational unpaired preference")
    assert kind == "unpaired-preference" and row.trained_from == 1
    bad = {**LAYOUTS["standard unpaired preference"], "label": False}
    rows, _ = load("", [LAYOUTS["standard unpaired preference"], bad])
    assert len(rows) == 1  # the undesirable completion is not trained on


@pytest.mark.parametrize(
    ("rows", "loader", "message"),
    [
        ([{"prompt": [USER], "chosen": [ANSWER, USER], "rejected": [WRONG]}],
         load_preference_rows, "row 1: chosen: expected assistant messages after the prompt"),
        ([{"prompt": [ANSWER], "chosen": [ANSWER], "rejected": [WRONG]}],
         load_preference_rows, "row 1: prompt[0].role: 'assistant' out of order"),
        ([{"chosen": [USER, ANSWER], "rejected": [{**USER, "content": "x"}, WRONG]}],
         load_preference_rows, "row 1: chosen and rejected share no opening turns"),
        ([{"chosen": "blue", "rejected": "green"}], load_preference_rows,
         "row 1: no 'prompt' column and chosen and rejected share no beginning"),
        ([{"prompt": [USER], "chosen": " a", "rejected": " b"}], load_preference_rows,
         "row 1: 'prompt' is a list; with text chosen and rejected it must be text"),
        ([LAYOUTS["standard unpaired preference"], {"prompt": "p", "completion": "c", "label": 1}],
         load_sft_rows, "row 2: 'label' is a int, expected true or false"),
        ([{"text": "ok"}, {"text": "  "}], load_sft_rows, "row 2: 'text' is empty"),
        ([{"text": "ok"}, {"text": 3}], load_sft_rows, "row 2: 'text' is a int, expected text"),
    ],
)  # fmt: skip
def test_refused_rows_name_file_row_and_problem(tmp_path: Path, rows, loader, message) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as err:
        loader(path)
    assert f"{path} {message}" in str(err.value)
