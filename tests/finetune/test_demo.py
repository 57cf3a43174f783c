"""The fine-tuning demo's data: the built-in multiple-choice set and the preference pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elmforge.demo.finetune import BUILTIN_TASK, builtin_task, pick_model, preference_pairs
from elmforge.errors import ElmforgeError
from elmforge.evaluate.llm_adapters import load_task


def test_builtin_set_is_in_llm_adapters_layout(tmp_path: Path) -> None:
    data_dir = builtin_task(tmp_path)
    test = load_task(data_dir, BUILTIN_TASK)  # every answer is one of its row's candidates
    train = json.loads((data_dir / BUILTIN_TASK / "train.json").read_text())
    assert len(test) > 20 and len(train) > 5 * len(test)
    assert not {r["instruction"] for r in test} & {r["instruction"] for r in train}
    pairs = preference_pairs(test[:30], seed=1)
    assert len(pairs) == 30
    for pair, row in zip(pairs, test):
        assert pair["chosen"] == f"the correct answer is {row['answer']}"
        assert pair["rejected"] != pair["chosen"] and pair["prompt"].endswith(" " * 16)


def test_a_missing_demo_model_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ElmforgeError, match="run `elmforge demo`"):
        pick_model(None)
