"""Bad input to `elmforge finetune` and `elmforge merge-adapter`: one line naming the file, row or
option, exit status 2, and nothing of what was there before is written over."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cli_support import assert_clean_error, run_elmforge, tree_snapshot
from tests.finetune.conftest import instruction_rows, make_model_dir, write_json, write_jsonl

USER, ASSISTANT = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, base_model_dir, bpe_tokenizer) -> dict[str, Path]:
    from elmforge.finetune import adapters
    from elmforge.finetune.config import FinetuneConfig
    from elmforge.finetune.trainer import FinetuneJob, run_record
    from elmforge.model.convert import load_pretrained

    root = tmp_path_factory.mktemp("bad")
    deeper = make_model_dir(root / "deeper", bpe_tokenizer, num_transformer_layers=3)
    adapter = root / "deeper-adapter"
    peft_model = adapters.add_adapter(
        load_pretrained(deeper), adapters.lora_config("lora", 4, 8, 0.0, ["qkv_proj"])
    )
    adapters.save_adapter(peft_model, adapter, str(deeper))
    good = write_json(root / "good.json", instruction_rows())
    run = root / "earlier-run"
    run.mkdir()
    earlier_data = write_json(root / "earlier.json", instruction_rows()[:4])
    job = FinetuneJob("sft", str(base_model_dir), str(earlier_data))
    record = run_record(job, FinetuneConfig.load(None, ["optim.lr=1e-3"]))
    (run / "config.yaml").write_text(yaml.safe_dump(record))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (root / "empty.jsonl").write_text("")
    return {
        "model": base_model_dir,
        "good": good,
        "adapter": adapter,
        "run": run,
        "foreign": foreign,
        "empty": root / "empty.jsonl",
        "columns": write_jsonl(root / "columns.jsonl", [{"question": "q", "answer": "a"}]),
        "order": write_jsonl(
            root / "order.jsonl", [{"messages": [USER, ASSISTANT]}, {"messages": [ASSISTANT, USER]}]
        ),
        "same": write_jsonl(
            root / "same.jsonl", [{"prompt": "p", "chosen": " a", "rejected": " a"}]
        ),
        "root": root,
    }


CASES = {
    "missing columns": (["finetune", "sft", "{model}", "--data", "{columns}"],
                        ["{columns}", "cannot tell the data format", "question"]),
    "dpo on sft rows": (["finetune", "dpo", "{model}", "--data", "{good}"],
                        ["{good}", "DPO needs preference rows"]),
    "empty file": (["finetune", "sft", "{model}", "--data", "{empty}"], ["{empty}", "no rows"]),
    "roles out of order": (["finetune", "sft", "{model}", "--data", "{order}"],
                           ["{order} row 2", "messages[0].role", "out of order"]),
    "chosen equals rejected": (["finetune", "dpo", "{model}", "--data", "{same}"],
                               ["{same} row 1", "chosen equals rejected"]),
    "target that does not exist": (["finetune", "sft", "{model}", "--data", "{good}", "--peft",
                                    "lora", "--lora.targets", "qkv_proj,q_proj"],
                                   ["--lora.targets", "'q_proj'"]),
    "bad config value": (["finetune", "sft", "{model}", "--data", "{good}", "--lora.r", "0"],
                         ["lora.r", "must be positive"]),
    # The resume rules of pretraining: another dataset is refused naming the key (a changed
    # optim.lr beside it would be applied).
    "run with other data": (["finetune", "sft", "{model}", "--data", "{good}", "--out", "{run}"],
                            ["{run}", "job.data", "--force-resume"]),
    "foreign output directory": (["finetune", "sft", "{model}", "--data", "{good}", "--out",
                                  "{foreign}"], ["{foreign}", "not an elmforge output"]),
    "adapter for another shape": (["merge-adapter", "{model}", "{adapter}", "--out", "{root}/m"],
                                  ["{adapter}", "does not fit this model"]),
    "merge over a foreign directory": (["merge-adapter", "{model}", "{adapter}", "--out",
                                        "{foreign}"], ["{foreign}", "not an elmforge output"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(case: str, inputs: dict[str, Path]) -> None:
    args, mentions = CASES[case]
    fill = {key: str(value) for key, value in inputs.items()}
    args = [a.format(**fill) for a in args]
    if "--out" not in args:
        args += ["--out", str(inputs["root"] / f"out-{case.replace(' ', '-')}")]
    before = tree_snapshot(inputs["root"])
    proc = run_elmforge(*args)
    assert_clean_error(proc, *[m.format(**fill) for m in mentions])
    assert tree_snapshot(inputs["root"]) == before
