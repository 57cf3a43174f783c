"""`study averaging` and `study tokens` on a finished micro run (every checkpoint kept)."""

from __future__ import annotations

import json

import pytest

from elmforge.evaluate.perplexity import perplexity
from elmforge.study.averaging import run_averaging_study
from elmforge.study.common import StudyOptions
from elmforge.study.evaluation import heldout_texts, load_for_scoring
from elmforge.study.tokens import run_tokens_study
from elmforge.train.checkpoint import average_checkpoints, list_checkpoints, sha256_file
from tests.evaluate.eval_helpers import write_task_dir

SOURCES = [{"name": "builtin:python-docs"}]
ENTRY_FIELDS = {"label", "tokens", "val_loss", "val_ppl", "val_loss_ci95", "bits_per_byte"}


def test_averaging_scores_checkpoints_average_and_final(tmp_path, micro_run_dir):
    lines: list[str] = []
    out = tmp_path / "averaging"
    options = StudyOptions(documents=2, out_dir=out)
    result = run_averaging_study(micro_run_dir, last=2, options=options, report=lines.append)
    labels = [m["label"] for m in result["models"]]
    assert labels == ["step-00000004", "step-00000006", "average of 2", "final (= step-00000006)"]
    for model in result["models"]:
        assert ENTRY_FIELDS <= set(model)
    assert [m["tokens"] for m in result["models"][:2]] == [2 * 4 * 32 * 2, 3 * 4 * 32 * 2]
    final, last_checkpoint = result["models"][3], result["models"][1]
    assert final["val_loss"] == last_checkpoint["val_loss"]

    # The average is scored as the perplexity module scores the averaged weights.
    checkpoints = list_checkpoints(micro_run_dir)[-2:]
    averaged = average_checkpoints(checkpoints, tmp_path / "averaged")
    model, tokenizer = load_for_scoring(averaged)
    peer = perplexity(model, tokenizer, heldout_texts(SOURCES, 2), context_length=32, stride=16)
    assert result["models"][2]["val_loss"] == pytest.approx(peer["loss"], rel=1e-6)
    difference = result["average_minus_final"]
    assert difference["difference"] == pytest.approx(peer["loss"] - final["val_loss"], abs=1e-6)
    assert difference["documents"] == 2
    assert result["conclusion"] in (out / "report.md").read_text()
    assert (out / "averaging.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "report.json").read_text())["last"] == 2

    # Checkpoints are keyed by their manifest's sha256, which is the file's.
    cache = json.loads((out / "evaluations.json").read_text())
    assert any(
        k.startswith(sha256_file(checkpoints[0] / "model" / "model.safetensors")) for k in cache
    )
    lines.clear()
    run_averaging_study(micro_run_dir, last=2, options=options, report=lines.append)
    assert not [line for line in lines if line.startswith(("scoring", "averaging"))]


@pytest.mark.slow
def test_tokens_with_zero_shot_tasks(tmp_path, micro_run_dir):
    tasks_dir = write_task_dir(tmp_path / "tasks")
    options = StudyOptions(
        documents=2, data_dir=str(tasks_dir), tasks=("arc_easy", "piqa"), limit=4
    )
    result = run_tokens_study(micro_run_dir, options=options, report=lambda line: None)
    checkpoints = result["checkpoints"]
    assert [c["step"] for c in checkpoints] == [2, 4, 6]
    assert [c["tokens"] for c in checkpoints] == [256, 512, 768]
    for checkpoint in checkpoints:
        zero_shot = checkpoint["zero_shot"]
        assert set(zero_shot["tasks"]) == {"arc_easy", "piqa"}
        for entry in zero_shot["tasks"].values():
            assert entry["metric"] == "acc_norm" and entry["n"] == 4
            assert 0 <= entry["value"] <= 1 and entry["stderr"] is not None
        mean = sum(e["value"] for e in zero_shot["tasks"].values()) / 2
        assert zero_shot["mean"] == pytest.approx(mean)
    assert result["in_run_validation"][0]["tokens"] == 0
    change = result["loss_last_minus_first"]
    assert change["difference"] == pytest.approx(
        checkpoints[-1]["val_loss"] - checkpoints[0]["val_loss"], abs=1e-6
    )
    accuracy = result["accuracy_last_minus_first"]
    assert accuracy["tasks"] == ["arc_easy", "piqa"]
    change = [checkpoints[-1]["zero_shot"]["tasks"][t]["value"]
              - checkpoints[0]["zero_shot"]["tasks"][t]["value"] for t in ("arc_easy", "piqa")]  # fmt: skip
    assert accuracy["difference"] == pytest.approx(sum(change) / 2)
    low, high = accuracy["ci95"]
    assert low < accuracy["difference"] < high
    report_dir = micro_run_dir / "study-tokens"
    markdown = (report_dir / "report.md").read_text()
    assert "| checkpoint | arc_easy | piqa |" in markdown
    assert (report_dir / "tokens.png").read_bytes()[:4] == b"\x89PNG"
