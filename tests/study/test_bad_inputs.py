"""`elmforge study ...` with bad input: one line naming the problem, exit 2, nothing changed.

One case per verb runs as a real process; the others call the same `main()` in this process
(each real process spends its seconds importing torch, and there are a dozen cases).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import pytest
import yaml

from elmforge.cli.main import main
from tests.cli_support import assert_clean_error, run_elmforge, tree_snapshot
from tests.study.conftest import micro_study

# The table builds a real run (and its tokenizer) once: seconds before the first row.
pytestmark = pytest.mark.slow

# The cases that also run as real processes.
IN_A_PROCESS = {"no-uniform-match", "averaging-too-few", "tokens-out-in-run"}

UNMATCHABLE = ["--set", "model.shape.model_dim=32", "--set", "model.shape.head_dim=8",
               "--set", "model.shape.qkv_multipliers=[0.5,2.0]"]  # fmt: skip
UNIFORM = ["--set", "model.shape.qkv_multipliers=1.0", "--set", "model.shape.ffn_multipliers=2.0"]

# id -> (arguments with {config}, {run}, {tmp} placeholders, texts the error line must name)
CASES = {
    "already-uniform": (["study", "lws", "--out", "{tmp}/a", "--config", "{config}", *UNIFORM],
                        ["already uniform", "ffn_multipliers"]),
    "no-uniform-match": (["study", "lws", "--out", "{tmp}/b", "--config", "{config}", *UNMATCHABLE],
                         ["no uniform shape comes within 1.0%", "35,520"]),
    "zero-seeds": (["study", "lws", "--out", "{tmp}/c", "--config", "{config}", "--seeds", "0"],
                   ["study.seeds", "at least 1"]),
    "bad-tolerance": (["study", "lws", "--out", "{tmp}/d", "--config", "{config}",
                       "--study.tolerance", "1.5"], ["study.tolerance"]),
    "missing-config": (["study", "lws", "--out", "{tmp}/e", "--config", "{tmp}/nope.yaml"],
                       ["nope.yaml", "no such config file"]),
    "missing-data-dir": (["study", "lws", "--out", "{tmp}/f", "--config", "{config}",
                          "--data-dir", "{tmp}/no-tasks"], ["--data-dir", "no-tasks"]),
    "out-is-a-run": (["study", "lws", "--out", "{run}", "--config", "{config}"],
                     ["run directory"]),
    "averaging-not-a-run": (["study", "averaging", "{tmp}"], ["not a run directory"]),
    "averaging-too-few": (["study", "averaging", "{run}", "--last", "9"],
                          ["3 intact checkpoint(s)", "--last 9"]),
    "averaging-last-one": (["study", "averaging", "{run}", "--last", "1"], ["--last 1"]),
    "tokens-no-documents": (["study", "tokens", "{run}", "--eval-documents", "0"],
                            ["--eval-documents 0"]),
    "tokens-out-in-run": (["study", "tokens", "{run}", "--out", "{run}/checkpoints"],
                          ["belongs to the run directory"]),
    "out-is-a-file": (["study", "lws", "--out", "{tmp}/file.txt", "--config", "{config}"],
                      ["file.txt", "not a directory"]),  # once NotADirectoryError
    "tasks-empty-item": (["study", "averaging", "{run}", "--tasks", "arc_easy,,piqa"],
                         ["--tasks", "empty items"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, bpe_tokenizer_dir, micro_run_dir):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    config = tmp / "study.yaml"
    config.write_text(yaml.safe_dump(micro_study(bpe_tokenizer_dir)))
    (tmp / "file.txt").write_text("mine\n")
    before = tree_snapshot(micro_run_dir)
    places = {"config": str(config), "run": str(micro_run_dir), "tmp": str(tmp)}

    results = {}
    for case, (template, _) in CASES.items():
        args = [arg.format(**places) for arg in template]
        if case in IN_A_PROCESS:
            results[case] = run_elmforge(*args, timeout=600)
        else:
            results[case] = _in_this_process(args)
    return results, tmp, before, tree_snapshot(micro_run_dir)


def _in_this_process(args: list[str]) -> subprocess.CompletedProcess:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(args)
        except SystemExit as exit_info:  # argparse's usage errors
            code = exit_info.code
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clean_line(case, outcomes):
    results, _, _, _ = outcomes
    assert_clean_error(results[case], *CASES[case][1])


def test_nothing_was_created_or_changed(outcomes):
    _, tmp, before, after = outcomes
    assert after == before  # the run the studies read
    assert (Path(tmp) / "file.txt").read_text() == "mine\n"
    for name in "abcdef":
        assert not (Path(tmp) / name).exists(), name


def test_a_second_study_on_a_held_directory_is_refused(tmp_path, bpe_tokenizer_dir):
    """The study runner holds its directory with the one lock every run uses (elmforge.locks)."""
    import sys

    from tests.train.helpers import subprocess_env

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(micro_study(bpe_tokenizer_dir)))
    held = tmp_path / "held"
    hold = ("import sys, time\nfrom elmforge.locks import hold_directory\n"
            "with hold_directory(sys.argv[1], 'study lws'):\n    print('held', flush=True)\n"
            "    time.sleep(600)\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(held)], env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = _in_this_process(["study", "lws", "--out", str(held), "--config", str(config)])
        assert_clean_error(proc, str(held), f"process {holder.pid}")
    finally:
        holder.kill()
        holder.wait(timeout=60)
