"""`evaluate --suite` without a network and without --data-dir: one line saying to pass
--data-dir, at once (the hub is probed once instead of retried for ~45 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from elmforge.evaluate.lm_eval_glue import hub_reachable
from tests.cli_support import assert_clean_error, run_elmforge

REPO_ROOT = Path(__file__).resolve().parents[2]
# Not offline by configuration: the hub's address just does not answer (port 9 on loopback
# refuses at once), as on a machine without a network. Nothing leaves the machine.
NO_NETWORK = {
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_HUB_OFFLINE": "0",
    "HF_DATASETS_OFFLINE": "0",
    "TRANSFORMERS_OFFLINE": "0",
    **dict.fromkeys(("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"), ""),
}


def test_the_probe_answers_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    assert hub_reachable(timeout=1) is False


@pytest.mark.slow
def test_a_suite_without_network_or_data_dir_says_to_pass_data_dir(
    model_dir: Path, tmp_path: Path
) -> None:
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    proc = run_elmforge(
        "evaluate", model_dir, "--suite", "zero-shot", "--out", tmp_path / "out",
        env={**NO_NETWORK, "PYTHONPATH": path}, cwd=tmp_path,
    )  # fmt: skip
    line = assert_clean_error(proc, "--data-dir", "unreachable")
    assert "arc_challenge" in line
    assert not (tmp_path / "out").exists()
