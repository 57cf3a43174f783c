"""Fine-tuning data: readers, format detection from the columns, row normalisation."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elmforge.errors import DataError
from elmforge.finetune.data import load_preference_rows, load_sft_rows, read_rows
from tests.finetune.conftest import instruction_rows, preference_rows, write_json, write_jsonl


def test_json_array_jsonl_parquet_and_directories_read_alike(tmp_path: Path) -> None:
    rows = instruction_rows()
    write_json(tmp_path / "a.json", rows[:3])
    write_jsonl(tmp_path / "b.jsonl", rows[3:5])
    pq.write_table(pa.Table.from_pylist(rows[5:]), tmp_path / "c.parquet")
    (tmp_path / "notes.txt").write_text("not data")
    read = read_rows(tmp_path)
    assert [dict(r.values) for r in read] == rows
    assert read[3].where == f"{tmp_path / 'b.jsonl'} row 1"


def test_formats_are_told_from_columns(tmp_path: Path) -> None:
    sft, kind = load_sft_rows(
        write_json(tmp_path / "i.json", instruction_rows()), prompt_style="alpaca"
    )
    assert kind == "instruction" and sft[0].prompt.endswith("### Response:\n")
    assert sft[0].completion == "The apple is red."
    chat_rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ]
        }
    ]
    chat, kind = load_sft_rows(write_jsonl(tmp_path / "c.jsonl", chat_rows))
    assert kind == "chat" and len(chat[0].messages) == 3 and chat[0].trained_from == 0
    pc = [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "completion": [{"role": "assistant", "content": "Yo"}],
        }
    ]
    rows, kind = load_sft_rows(write_jsonl(tmp_path / "p.jsonl", pc))
    assert kind == "prompt-completion" and rows[0].trained_from == 1
    as_chat, _ = load_sft_rows(tmp_path / "i.json", prompt_style="chat")
    assert as_chat[0].messages[0] == {"role": "user", "content": "What colour is the apple?"}


def test_ultrafeedback_layout_takes_the_shared_turns_as_prompt(tmp_path: Path) -> None:
    user = {"role": "user", "content": "Name a fruit."}
    row = {
        "prompt": "Name a fruit.",
        "chosen": [user, {"role": "assistant", "content": "A plum."}],
        "rejected": [user, {"role": "assistant", "content": "A brick."}],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    (pair,) = load_preference_rows(write_jsonl(tmp_path / "uf.jsonl", [row]))
    assert pair.prompt == (user,)
    assert pair.chosen == ({"role": "assistant", "content": "A plum."},)
    text = load_preference_rows(write_jsonl(tmp_path / "t.jsonl", preference_rows()))
    assert text[0].prompt == "What colour is the apple?" and text[0].chosen.endswith("red.")


@pytest.mark.parametrize(
    ("rows", "loader", "message"),
    [
        ([{"body": "hello"}], load_sft_rows, "cannot tell the data format from the columns (body)"),
        (preference_rows(), load_sft_rows, "are for `elmforge finetune dpo`"),
        (instruction_rows(), load_preference_rows, "DPO needs preference rows"),
        (
            [*instruction_rows()[:2], {"instruction": "x"}],
            load_sft_rows,
            "row 3: no 'output' column",
        ),
        (
            [
                {
                    "messages": [
                        {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "b"},
                    ]
                }
            ],
            load_sft_rows,
            "row 1: messages[0].role: 'assistant' out of order",
        ),
        (
            [{"messages": [{"role": "user", "content": "only a question"}]}],
            load_sft_rows,
            "ends without an assistant turn",
        ),
        (
            [{"prompt": "p", "chosen": " same", "rejected": " same"}],
            load_preference_rows,
            "row 1: chosen equals rejected",
        ),
        ([{"instruction": "q", "output": "   "}], load_sft_rows, "'output' is empty"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path: Path, rows, loader, message) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as err:
        loader(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        read_rows(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="no such data file"):
        read_rows(tmp_path / "absent.json")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="no .json, .jsonl, .parquet files"):
        read_rows(tmp_path / "d")
