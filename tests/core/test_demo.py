"""`elmforge demo`'s library function: the whole lifecycle in one directory, written safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elmforge.demo.pretrain import run_demo
from elmforge.layout import RunDir, is_run_dir

# A few hundred tiny documents and a micro schedule: the lifecycle in seconds, not minutes.
FAST = [
    "schedule.max_steps=4",
    "schedule.warmup_steps=1",
    "checkpoint.save_every=2",
    "log.eval_batches=0",
    "data.seq_len=32",
    "data.min_characters=10",
    "data.min_tokens=4",
    "train.micro_batch_size=2",
    "model.shape.max_context_length=64",
]


@pytest.mark.slow
def test_demo_runs_the_lifecycle_into_one_directory(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"text": f"def function_{i}(value):\n    return value * {i} + {i % 7}\n"}
        for i in range(300)
    ]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    held_out = tmp_path / "held-out.jsonl"  # 3 documents: the perplexity must be over these
    held_out.write_text(
        "".join(json.dumps({"text": f"def held_out_{i}(x):\n    return x - {i}\n"}) + "\n"
                for i in range(3)),
        encoding="utf-8",
    )  # fmt: skip
    lines: list[str] = []
    streamed: list[str] = []
    summary = run_demo(
        tmp_path / "demo",
        overrides=[
            *FAST,
            f"data.sources=[{{file_name: {corpus}}}]",
            f"data.validation_sources=[{{file_name: {held_out}}}]",
        ],
        vocab_size=300,
        average_last=2,
        eval_documents=5,
        report=lines.append,
        on_text=streamed.append,
    )
    out = tmp_path / "demo"
    assert is_run_dir(out / "run")
    assert RunDir(out / "run").final.is_dir()
    assert (out / "averaged" / "tokenizer.json").is_file()  # came with the checkpoints
    assert json.loads((out / "averaged" / "averaged_from.json").read_text())[-1].endswith(
        "step-00000004/model"
    )
    on_disk = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(summary))
    for label in ("final", "averaged"):
        # eval_documents=5, and the validation file has 3: not the training file's 300.
        assert on_disk[label]["documents"] == 3 and on_disk[label]["perplexity"] > 1
    assert (
        "".join(streamed) == summary["sample"]["prompt"] + summary["sample"]["continuation"] + "\n"
    )
    assert any("averaging 2 checkpoints: step-00000002, step-00000004" in line for line in lines)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_demo_refuses_before_training_what_it_could_not_finish(tmp_path: Path) -> None:
    from elmforge.errors import ConfigError, OptionError

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "def f(x):\\n    return x\\n"}\n', encoding="utf-8")
    # A file has no validation split: the perplexity would be the training text's.
    with pytest.raises(ConfigError, match="files have no validation split"):
        run_demo(tmp_path / "demo", overrides=[*FAST, f"data.sources=[{{file_name: {corpus}}}]"])
    for bad in (0, -2):
        with pytest.raises(OptionError, match=f"average_last {bad}: must be at least 1"):
            run_demo(tmp_path / "demo", average_last=bad)
    assert not (tmp_path / "demo").exists()
