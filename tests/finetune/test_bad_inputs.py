"""Bad input to `elmforge finetune` and `elmforge merge-adapter`: one line naming the file, row or
option, exit status 2, and nothing of what was there before is written over."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

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
    fitting = root / "fitting-adapter"
    peft_model = adapters.add_adapter(
        load_pretrained(base_model_dir), adapters.lora_config("lora", 4, 8, 0.0, ["qkv_proj"])
    )
    adapters.save_adapter(peft_model, fitting, str(base_model_dir))
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
    (root / "deep.json").write_text("[" * 100000 + "]" * 100000)  # once a RecursionError
    (root / "deep.jsonl").write_text('{"instruction": ' + "[" * 100000 + "]" * 100000 + "}\n")
    nan_adapter = root / "nan-adapter"  # an adapter of the right shape whose tensor is all NaN
    shutil.copytree(fitting, nan_adapter)
    weights = load_file(nan_adapter / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, nan_adapter / "adapter_model.safetensors")
    return {
        "deep": root / "deep.json",
        "deep_rows": root / "deep.jsonl",
        "nan_adapter": nan_adapter,
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
    "unknown lm-eval task": (["finetune", "sft", "{model}", "--data", "{good}", "--eval.every",
                              "2", "--eval.tasks", "arc_easy,arc_esy"],
                             ["eval.tasks", "unknown lm-eval task 'arc_esy'"]),
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
    "json nested thousands deep": (["finetune", "sft", "{model}", "--data", "{deep}"],
                                   ["{deep}", "invalid JSON"]),
    "jsonl row nested thousands deep": (["finetune", "sft", "{model}", "--data", "{deep_rows}"],
                                        ["{deep_rows} row 1", "invalid JSON"]),
    "adapter holding NaN": (["merge-adapter", "{model}", "{nan_adapter}", "--out", "{root}/m"],
                            ["{nan_adapter}", "NaN"]),
    "model path that does not exist": (["finetune", "sft", "./nowhere/model", "--data", "{good}"],
                                       ["nowhere/model", "no such model directory"]),
    "hub name offline": (["finetune", "sft", "nosuch-org/nosuch-model", "--data", "{good}"],
                         ["nosuch-org/nosuch-model", "HF_HUB_OFFLINE"]),
    "merge onto a missing base": (["merge-adapter", "runs/nowhere/final", "{adapter}", "--out",
                                   "{root}/m"], ["runs/nowhere/final", "no such model directory"]),
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


@pytest.mark.slow
def test_a_second_finetune_on_a_held_out_is_refused(inputs: dict[str, Path], tmp_path) -> None:
    """One writer per run directory: a process holds --out (as a running finetune does)."""
    import subprocess
    import sys

    from tests.train.helpers import subprocess_env

    hold = ("import sys, time\nfrom elmforge.locks import hold_directory\n"
            "with hold_directory(sys.argv[1], 'finetune'):\n    print('held', flush=True)\n"
            "    time.sleep(600)\n")  # fmt: skip
    out = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_elmforge("finetune", "sft", inputs["model"], "--data", inputs["good"],
                            "--out", out)  # fmt: skip
        assert_clean_error(proc, str(out), f"process {holder.pid}")
        assert list(out.iterdir()) == []
    finally:
        holder.kill()
        holder.wait(timeout=60)
