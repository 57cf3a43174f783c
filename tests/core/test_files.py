"""Atomic writes and the output rule: what a verb may replace, and what it never touches."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from elmforge.errors import ElmforgeError
from elmforge.files import (
    OUTPUT_MARKER,
    atomic_directory,
    atomic_write_text,
    claim_output,
    clean_temporaries,
    output_verb,
)


def make_run(root):
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text("seed: 0\n")
    (root / "metrics.jsonl").write_text("")
    return root


def test_atomic_write_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "x.txt", "hello")
        with atomic_directory(tmp_path / "d", verb="average") as tmp:
            (tmp / "f").write_text("1")
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert output_verb(tmp_path / "d") == "average"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_write_leaves_old_content_and_no_temporaries(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target, verb="v") as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target, verb="v") as tmp:
        (tmp / "f").write_text("new")
        raise RuntimeError("boom")
    assert (target / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_writing_a_file_onto_a_directory_is_refused(tmp_path):
    with pytest.raises(ElmforgeError, match="is a directory"):
        atomic_write_text(tmp_path, "x")


def _dead_pid() -> int:
    """The id of a process that has exited."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_clean_temporaries(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".x.tmp-{dead}-abc").mkdir()
    (tmp_path / f".y.old-{dead}").write_text("")
    (tmp_path / "keep").write_text("")
    (tmp_path / ".z.tmp-abc").write_text("")  # no PID (an older spelling): stale
    clean_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_clean_temporaries_spares_live_writers_and_other_names_and_restores_old_copies(tmp_path):
    dead = _dead_pid()
    live = os.getppid()  # pytest's parent: a running process that is not this one
    (tmp_path / f".averaged.tmp-{live}-abc").mkdir()  # a running `average --out RUN/averaged`
    (tmp_path / f".config.yaml.tmp-{dead}-x.yaml").write_text("half")
    (tmp_path / f".notes.tmp-{dead}-x").write_text("someone else's")
    holder = tmp_path / f".final.old-{dead}-abc"  # killed between the two renames
    (holder / "final").mkdir(parents=True)
    (holder / "final" / "model.safetensors").write_text("the only copy")
    clean_temporaries(tmp_path, names=lambda name: name in ("final", "config.yaml", "averaged"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".averaged.tmp-{live}-abc",
        f".notes.tmp-{dead}-x",
        "final",
    ]
    assert (tmp_path / "final" / "model.safetensors").read_text() == "the only copy"


@pytest.mark.parametrize("stop", [OSError(18, "Invalid cross-device link"), KeyboardInterrupt()])
def test_a_failed_swap_puts_the_old_output_back(tmp_path, monkeypatch, stop):
    target = tmp_path / "out"
    with atomic_directory(target, verb="v") as tmp:
        (tmp / "f").write_text("old")
    real = Path.rename

    def rename(self, other):
        if self.name.startswith(".out.tmp-"):  # the new output's rename into place
            raise stop
        return real(self, other)

    monkeypatch.setattr(Path, "rename", rename)
    with (
        pytest.raises((ElmforgeError, KeyboardInterrupt)),
        atomic_directory(target, verb="v") as tmp,
    ):
        (tmp / "f").write_text("new")
    assert (target / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_old_copies_have_unique_names(tmp_path, monkeypatch):
    import tempfile

    names = []
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        names.append(Path(real(*args, **kwargs)).name)
        return str(tmp_path / names[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    for text in ("1", "2", "3"):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "f").write_text(text)
    old = [n for n in names if ".old-" in n]
    assert len(old) == 2 and len(set(old)) == 2  # a repeated PID cannot collide
    assert (tmp_path / "out" / "f").read_text() == "3"


def test_umask_is_never_set_by_a_write(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o022)
    path = atomic_write_text(tmp_path / "x.txt", "hello")
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("1")
    assert calls == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_current_umask()


def _current_umask() -> int:
    from elmforge.files import _umask

    return _umask()


def test_a_missing_input_is_named_as_such_not_as_an_unwritable_output(tmp_path):
    with pytest.raises(ElmforgeError) as caught, atomic_directory(tmp_path / "out") as tmp:
        (tmp / "copy").write_bytes((tmp_path / "missing-input.bin").read_bytes())
    assert str(caught.value) == f"{tmp_path / 'missing-input.bin'}: No such file or directory"
    import shutil

    from elmforge.files import atomic_write

    with pytest.raises(ElmforgeError) as caught:
        atomic_write(tmp_path / "x.txt", lambda tmp: shutil.copyfile(tmp_path / "in.txt", tmp))
    assert str(caught.value) == f"{tmp_path / 'in.txt'}: No such file or directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_claim_output_on_paths_that_leave_or_re_enter_a_run(tmp_path):
    run = make_run(tmp_path / "run")
    # RUN/.. is the run's parent (allowed: a new output beside the run, here the parent exists
    # and holds the run, so it is not an elmforge output).
    with pytest.raises(ElmforgeError, match="not an elmforge output"):
        claim_output(run / "..", "average")
    with pytest.raises(ElmforgeError, match="is a run directory"):
        claim_output(run / "sub" / "..", "average", force=True)
    (tmp_path / "link-to-run").symlink_to(run)
    with pytest.raises(ElmforgeError, match="is a run directory"):
        claim_output(tmp_path / "link-to-run", "average", force=True)
    (tmp_path / "elsewhere").mkdir()
    (run / "out-link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ElmforgeError, match="belongs to the run directory"):
        claim_output(run / "out-link", "average", force=True)
    (run / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(ElmforgeError, match="belongs to the run directory"):
        claim_output(run / "dangling", "convert", kind="file", force=True)
    from elmforge.files import claim_work_directory

    with pytest.raises(ElmforgeError, match="belongs to the run directory"):
        claim_work_directory(run / "checkpoints" / "x" / ".." / "y", ("run",), "a demo")
    assert claim_work_directory(run / "sub" / ".." / "demo", ("run",), "a demo")


def test_the_force_message_names_the_flag_only_on_the_command_line(tmp_path):
    (tmp_path / "f.pt").write_text("x")
    with pytest.raises(ElmforgeError) as caught:
        claim_output(tmp_path / "f.pt", "convert", kind="file")
    assert str(caught.value).endswith("exists; force replaces it")
    assert caught.value.for_command_line().endswith("exists; --force replaces it")


def test_claim_output_rules(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(ElmforgeError, match="run directory"):
        claim_output(run, "average", force=True)
    for name in ("checkpoints", "final", "config.yaml", "tb"):
        with pytest.raises(ElmforgeError, match="belongs to the run"):
            claim_output(run / name, "average", force=True)
    with pytest.raises(ElmforgeError, match="belongs to the run"):
        claim_output(run / "config.yaml", "convert", force=True, kind="file")
    assert claim_output(run / "averaged", "average") == run / "averaged"
    averaged = run / "averaged"
    averaged.mkdir()
    (averaged / OUTPUT_MARKER).write_text('{"verb": "average"}')
    (averaged / "model.safetensors").write_text("")
    with pytest.raises(ElmforgeError, match="force replaces it"):
        claim_output(averaged, "average")
    assert claim_output(averaged, "average", force=True) == averaged
    with pytest.raises(ElmforgeError, match="belongs to the run"):
        claim_output(averaged, "convert", force=True)
    outside = tmp_path / "outside"
    with atomic_directory(outside, verb="average") as tmp:
        (tmp / "model.safetensors").write_text("")
    with pytest.raises(ElmforgeError, match="output of `elmforge average`"):
        claim_output(outside, "convert", force=True)
    other = tmp_path / "user-data"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ElmforgeError, match="not an elmforge output"):
        claim_output(other, "average", force=True)
    assert claim_output(tmp_path / "empty-or-new", "average") == tmp_path / "empty-or-new"
    with pytest.raises(ElmforgeError, match="not a directory"):
        claim_output(other / "notes.txt", "average")
    with pytest.raises(ElmforgeError, match="force replaces it"):
        claim_output(other / "notes.txt", "convert", kind="file")
    with pytest.raises(ElmforgeError, match="inside the input"):
        claim_output(other / "sub", "convert", inputs=(other,))
    with pytest.raises(ElmforgeError, match="contain the input"):
        claim_output(tmp_path, "convert", inputs=(other,), force=True)


def test_files_written_inside_an_output_directory_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "sub").mkdir(mode=0o700)
            private = tmp / "sub" / "weights"
            private.write_text("x")
            os.chmod(private, 0o600)  # as safetensors and mkstemp write them
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d" / "sub").stat().st_mode) == 0o775
    assert stat.S_IMODE((tmp_path / "d" / "sub" / "weights").stat().st_mode) == 0o664


def test_a_library_write_error_on_a_full_disk_says_so(tmp_path, monkeypatch):
    import elmforge.files as files

    def fails(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # torch.save

    monkeypatch.setattr(files, "_disk_is_full", lambda path: True)
    with pytest.raises(ElmforgeError, match=r"out\.pt: the disk is full"):
        files.atomic_write(tmp_path / "out.pt", fails)
    monkeypatch.setattr(files, "_disk_is_full", lambda path: False)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # not a disk problem: as it was
        files.atomic_write(tmp_path / "out.pt", fails)
    assert list(tmp_path.iterdir()) == []


def test_errors_inside_an_output_directory_name_the_output_not_the_temporary(tmp_path):
    with pytest.raises(ElmforgeError) as caught, atomic_directory(tmp_path / "results") as tmp:
        atomic_write_text(tmp / "results.json", "x")
        raise ElmforgeError(f"{tmp / 'results.json'}: cannot write (boom)")
    assert str(caught.value) == f"{tmp_path / 'results' / 'results.json'}: cannot write (boom)"
    assert list(tmp_path.iterdir()) == []


def test_claim_work_directory(tmp_path):
    from elmforge.files import claim_work_directory

    names = ("run", "demo.json")
    assert claim_work_directory(tmp_path / "new", names, "a demo") == tmp_path / "new"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "run").mkdir()
    (tmp_path / "d" / ".run.tmp-1-x").mkdir()  # a killed write's temporary is not the user's
    assert claim_work_directory(tmp_path / "d", names, "a demo") == tmp_path / "d"
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ElmforgeError, match="holds 'notes.txt', which is not part of a demo"):
        claim_work_directory(tmp_path / "d", names, "a demo")
    with pytest.raises(ElmforgeError, match="exists and is not a directory"):
        claim_work_directory(tmp_path / "d" / "notes.txt", names, "a demo")
    run = make_run(tmp_path / "r")
    with pytest.raises(ElmforgeError, match="belongs to the run directory"):
        claim_work_directory(run / "checkpoints" / "x", names, "a demo")


def test_a_failure_on_the_old_copys_holder_names_the_output(tmp_path, monkeypatch):
    import tempfile

    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "f").write_text("old")
    real = tempfile.mkdtemp

    def mkdtemp(prefix="", dir=None, **kwargs):
        if ".old-" in prefix:
            name = Path(dir) / f"{prefix}x"
            raise PermissionError(13, "Permission denied", str(name))
        return real(prefix=prefix, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(ElmforgeError) as caught, atomic_directory(tmp_path / "out") as tmp:
        (tmp / "f").write_text("new")
    assert str(caught.value) == f"{tmp_path / 'out'}: not writable (Permission denied)"
    assert (tmp_path / "out" / "f").read_text() == "old"
