"""The llm-adapters suite: CoreNet's multiple-choice scoring of LLM-Adapters' CommonSense files.

End to end: a micro model tuned (LoRA, LLM-Adapters' prompt) on a tiny boolq-style set scores it
perfectly through `elmforge evaluate --adapter ... --suite llm-adapters`, the same as its merged
model does, while the untuned model does not; the real files' candidates and CoreNet's row order
are checked on the shared copy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from elmforge.errors import DataError
from elmforge.evaluate.llm_adapters import answer_options, available_tasks, load_task
from tests.cli_support import run_elmforge
from tests.finetune.conftest import COLOURS, THINGS, make_model_dir, write_json


def boolq_rows() -> list[dict[str, str]]:
    rows = []
    for i, thing in enumerate(THINGS):
        colour = COLOURS[i] if i % 2 == 0 else COLOURS[(i + 3) % len(COLOURS)]
        answer = "true" if i % 2 == 0 else "false"
        rows.append({
            "instruction": "Please answer the following question with true or false, question: "
            f"is the {thing} {colour}?\n\nAnswer format: true/false",
            "input": "", "output": f"the correct answer is {answer}", "answer": answer,
        })  # fmt: skip
    return rows


def test_candidates_follow_corenets_rule() -> None:
    assert answer_options("q\n\nAnswer format: true/false") == ["true", "false"]
    assert answer_options("q\n\nAnswer format: solution1/solution2") == ["solution1", "solution2"]
    assert answer_options("Option1: a Option2: b Answer format: option1/option2") == [
        "option1",
        "option2",
    ]
    assert answer_options("q\n\nAnswer format: answer1/answer2/answer3") == [
        "answer1",
        "answer2",
        "answer3",
    ]
    assert answer_options("no format line") == []


def test_shared_files_parse_and_keep_corenets_order(shared_dir: Path) -> None:
    data_dir = shared_dir / "data" / "commonsense"
    tasks = available_tasks(data_dir)
    assert {"boolq", "piqa", "social_i_qa", "winogrande", "ARC-Easy"} <= set(tasks)
    for task in tasks:
        rows = load_task(data_dir, task)  # every answer is among its row's candidates
        original = json.loads((data_dir / task / "test.json").read_text())
        random.seed(83652)  # CoreNet: random.seed(83652); random.shuffle(dataset)
        random.shuffle(original)
        assert rows[:50] == original[:50]
        assert load_task(data_dir, task, limit=7) == original[:7]


def test_a_row_whose_answer_is_not_a_candidate_is_refused(tmp_path: Path) -> None:
    bad = boolq_rows()
    bad[3]["answer"] = "maybe"
    (tmp_path / "boolq").mkdir()
    write_json(tmp_path / "boolq" / "test.json", bad)
    with pytest.raises(DataError, match=r"test.json row 4: answer 'maybe'"):
        load_task(tmp_path, "boolq")


@pytest.mark.slow
def test_a_tuned_adapter_scores_its_set_through_evaluate(tmp_path: Path) -> None:
    from elmforge.data.prompts import llm_adapters_prompt
    from elmforge.data.tokenizer import train_bpe_tokenizer
    from elmforge.evaluate.llm_adapters import evaluate_llm_adapters
    from elmforge.finetune.config import FinetuneConfig
    from elmforge.finetune.trainer import FinetuneJob, finetune
    from elmforge.modeldir.loading import load

    rows = boolq_rows()
    data_dir = tmp_path / "commonsense"
    (data_dir / "boolq").mkdir(parents=True)
    write_json(data_dir / "boolq" / "test.json", rows)
    train = write_json(tmp_path / "train.json", rows)
    corpus = [llm_adapters_prompt(r["instruction"]) + r["output"] for r in rows] * 3
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=400, min_frequency=1)
    base = make_model_dir(tmp_path / "base", tokenizer)
    config = FinetuneConfig.load(None, ["peft=lora", "lora.r=8", "lora.dropout=0.0",
                                        "data.prompt_style=llm-adapters", "optim.lr=1e-2",
                                        "schedule.max_steps=40", "train.micro_batch_size=8",
                                        "log.progress=none", "schedule.warmup_ratio=0.0"])  # fmt: skip
    run = tmp_path / "run"
    finetune(FinetuneJob("sft", str(base), str(train)), config, run)

    untuned = load(base, device="cpu")
    before = evaluate_llm_adapters(untuned.model, untuned.tokenizer, data_dir)["results"]
    out = tmp_path / "eval"
    result = run_elmforge("evaluate", str(base), "--adapter", str(run / "adapter"), "--suite",
                          "llm-adapters", "--data-dir", str(data_dir), "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    assert report["results"]["boolq"]["acc"] == 1.0 and report["results"]["boolq"]["n"] == 8
    assert before["boolq"]["acc"] < 1.0
    merged = load(run / "final", device="cpu")
    after = evaluate_llm_adapters(merged.model, merged.tokenizer, data_dir)["results"]
    assert after["boolq"] == report["results"]["boolq"]
    assert "| boolq | 8 |" in (out / "results.md").read_text()
