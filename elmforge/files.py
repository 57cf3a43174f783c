"""Writing outputs safely: the one home of atomic writes and of the "never overwrite" rule.

Every file and directory elmforge produces goes through here:

- :func:`atomic_write` / :func:`atomic_write_text` / :func:`atomic_directory`: write to a hidden
  temporary sibling (``.NAME.tmp-PID-XXXX``), fsync, rename into place; on any failure the
  temporary is removed and whatever was at the destination is untouched. Permissions follow the
  umask (``mkstemp``/``mkdtemp`` would create 0600/0700, unreadable to a team on a shared disk).
- :func:`claim_output`: the rule for an output path that already exists. A verb may replace only
  what it wrote itself earlier, and only with ``--force``; a run directory (``config.yaml`` plus
  ``checkpoints/`` or ``metrics.jsonl``) is never replaced, nor is anything inside one that the verb
  did not write. The producing verb is recorded in a small marker file (``.elmforge-output``) in
  each output directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from elmforge.errors import ElmforgeError, first_line
from elmforge.layout import RESERVED_NAMES, enclosing_run_dir, is_run_dir

OUTPUT_MARKER = ".elmforge-output"


def _read_umask_once() -> int:
    # os.umask can only be read by setting it: done once, at import (before any thread of ours).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _read_umask_once()


def _umask() -> int:
    """The process's umask, read from /proc/self/status on Linux (so a later change counts)
    and never by setting it: ``os.umask(0)`` per write would open a window in which a file
    another thread (TensorBoard's writer, a tokenizer) creates is world-writable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def _apply_umask(path: Path, directory: bool) -> None:
    mode = (0o777 if directory else 0o666) & ~_umask()
    with contextlib.suppress(OSError):
        os.chmod(path, mode)


def disk_error(path: str | os.PathLike, err: OSError) -> ElmforgeError:
    """A one-line error for a failed write, saying plainly when the disk is full."""
    if err.errno == errno.ENOSPC:
        return ElmforgeError(f"{path}: the disk is full (no space left on device)")
    if err.errno == errno.EDQUOT:
        return ElmforgeError(f"{path}: disk quota exceeded")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ElmforgeError(f"{path}: not writable ({err.strerror})")
    return ElmforgeError(f"{path}: cannot write ({err.strerror or err})")


# A write that fails with less than this free is taken for a full disk: libraries that write
# through their own code (torch.save's zip writer, safetensors, matplotlib) report ENOSPC as a
# RuntimeError or their own error type, without the errno.
_NEARLY_FULL_BYTES = 1 << 20


def _disk_is_full(path: Path) -> bool:
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES


# Write failures that are the machine's state, not a bug: one line, like any expected failure.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _write_failed(path: Path, probe: Path, err: BaseException, tmp: Path) -> BaseException:
    """The error to raise for a write of ``path`` that failed with ``err`` (``probe``: a
    directory on the same filesystem; ``tmp``: the temporary being written): one line naming
    ``path``, never the temporary, or, for a file that is neither (an input the writer read),
    that file: a missing input is not a failure to write the output."""
    if isinstance(err, OSError):
        other = _other_file(err, path, tmp)
        if other is not None and err.errno not in DISK_ERRNOS:
            return ElmforgeError(f"{other}: {err.strerror or first_line(err)}")
        return disk_error(path, err)
    if isinstance(err, ElmforgeError):
        return err
    if _disk_is_full(probe):
        return disk_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return err


def _other_file(err: OSError, path: Path, tmp: Path) -> str | None:
    """The file ``err`` names when it is neither the output, nor the temporary, nor inside
    them."""
    for name in (err.filename, err.filename2):
        if name is None or isinstance(name, int):
            continue
        named = Path(os.fsdecode(name)).absolute()
        ours = (path.absolute(), tmp.absolute())
        if _TEMPORARY.match(named.name) or any(named == p or p in named.parents for p in ours):
            continue  # the output, its temporary, or the holder of its old copy
        return str(os.fsdecode(name))
    return None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _finish_tree(root: Path) -> None:
    """fsync every file under ``root`` and give every entry the umask's permissions: writers such
    as safetensors (0600) and ``mkdtemp`` (0700) ignore the umask."""
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_file():
            _fsync_file(path)
            executable = path.stat().st_mode & 0o111
            _apply_umask(path, directory=bool(executable))
        elif path.is_dir():
            _apply_umask(path, directory=True)


def _make_parent(path: Path) -> None:
    if path.parent.exists() and not path.parent.is_dir():
        raise ElmforgeError(f"{path}: {path.parent} is a file, not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise disk_error(path.parent, err) from None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ElmforgeError(f"{path}: is a directory, expected a file path")
    _make_parent(path)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=path.suffix, dir=path.parent
        )
    except OSError as err:
        raise disk_error(path, err) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync_file(tmp)
        _apply_umask(tmp, directory=False)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as err:
        raised = _write_failed(path, path.parent, err, tmp)
        if raised is err:
            raise
        raise raised from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, value: object) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def replace_files(
    directory: str | os.PathLike, *, last: tuple[str, ...] = (), remove: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yield a staging directory inside ``directory`` (created if missing); the files written
    there then replace their namesakes in ``directory``, each fsynced, given the umask's
    permissions and renamed (never half a file), those named in ``last`` after the others (the
    file readers look for, so that finding it means finding the set). Then the names in
    ``remove`` that were not staged are deleted: deletions come last, so an interruption leaves
    the old file rather than none. Other files of ``directory`` are kept; the staging directory
    is removed whatever happens."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".files.tmp-{os.getpid()}-", dir=directory))
    except OSError as err:
        raise disk_error(directory, err) from None
    try:
        yield staging
        order = {name: rank for rank, name in enumerate(last, start=1)}
        staged = sorted(
            (p for p in staging.iterdir() if p.is_file()), key=lambda p: order.get(p.name, 0)
        )
        for item in staged:
            _fsync_file(item)
            _apply_umask(item, directory=False)
            os.replace(item, directory / item.name)
        fsync_dir(directory)
        names = {item.name for item in staged}
        for name in remove:
            if name not in names:
                (directory / name).unlink(missing_ok=True)
    except OSError as err:
        raise disk_error(directory, err) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, verb: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success rename it to ``final`` (replacing it).

    ``verb`` records the producing verb in the directory's marker (see :func:`claim_output`).
    An existing ``final`` is first moved into a hidden holder (``.NAME.old-PID-XXXX/NAME``) and
    deleted only once the new one is in place; whatever stops the swap (an error, Ctrl-C) puts
    it back. A process killed between the two renames leaves it in the holder, from which
    :func:`clean_temporaries` restores it.
    """
    final = Path(final)
    _make_parent(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as err:
        raise disk_error(final, err) from None
    holder: Path | None = None
    done = False
    try:
        _apply_umask(tmp, directory=True)
        yield tmp
        if verb is not None:
            (tmp / OUTPUT_MARKER).write_text(json.dumps({"verb": verb}) + "\n", encoding="utf-8")
        _finish_tree(tmp)
        if final.exists() or final.is_symlink():
            holder = Path(
                tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent)
            )
            final.rename(holder / final.name)
        tmp.rename(final)
        done = True
        fsync_dir(final.parent)
    except Exception as err:
        raised = _write_failed(final, final.parent, err, tmp)
        if isinstance(raised, ElmforgeError) and str(tmp) in str(raised):
            # A nested write named a file in the temporary directory: name the output instead.
            raised = _renamed(raised, str(tmp), str(final))
        if raised is err:
            raise
        raise raised from None
    finally:
        if holder is not None and not done:
            _restore_old(holder, final)
        shutil.rmtree(tmp, ignore_errors=True)
        if holder is not None and (done or not (holder / final.name).exists()):
            _remove(holder)


def _restore_old(holder: Path, final: Path) -> None:
    """Put the copy a holder keeps back at ``final`` (if ``final`` is not there)."""
    kept = holder / final.name
    if (kept.exists() or kept.is_symlink()) and not (final.exists() or final.is_symlink()):
        with contextlib.suppress(OSError):
            kept.rename(final)


def _renamed(err: ElmforgeError, old: str, new: str) -> ElmforgeError:
    err.args = tuple(a.replace(old, new) if isinstance(a, str) else a for a in err.args)
    err.template = err.template.replace(old, new)
    return err


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# .NAME.tmp-PID-XXXX / .NAME.old-PID-XXXX (this module's); without a PID, an older spelling.
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?P<tag>tmp|old)-(?:(?P<pid>\d+)(?:-|$))?")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing while it cleans
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True


def clean_temporaries(
    directory: str | os.PathLike, names: Callable[[str], bool] | None = None
) -> None:
    """Remove the temporaries a killed write left in ``directory`` (``.NAME.tmp-PID-*``,
    ``.NAME.old-PID-*``), only those of names ``names`` accepts (None: any) and only of
    processes that are no longer running (a live ``average --out RUN/averaged`` keeps its own).
    A holder of an old copy whose ``NAME`` is missing (killed between the two renames of
    :func:`atomic_directory`) is put back at ``NAME`` instead: it may be the only copy."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or (names is not None and not names(match["name"])):
            continue
        if match["pid"] is not None and _alive(int(match["pid"])):
            continue
        if match["tag"] == "old" and path.is_dir() and not path.is_symlink():
            _restore_old(path, directory / match["name"])
        _remove(path)


# -- what may be overwritten ------------------------------------------------------------------
def _begins_with(path: Path, signature: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(signature)) == signature
    except OSError:
        return False


def output_verb(path: str | os.PathLike) -> str | None:
    """The verb recorded in an output directory's marker, None if it has none."""
    try:
        return json.loads((Path(path) / OUTPUT_MARKER).read_text(encoding="utf-8")).get("verb")
    except (OSError, ValueError, AttributeError):
        return None


def _run_positions(path: Path) -> list[tuple[Path, Path]]:
    """(place, run) for each place a write at ``path`` touches that is a run directory or inside
    one: the entry itself (its parent resolved: a symbolic link is replaced, not followed) and
    where it resolves to (``RUN/..``, ``RUN/sub/..``, a link into or out of a run)."""
    resolved = path.resolve()
    places = [resolved]
    if path.name not in ("", ".", ".."):
        places.insert(0, path.parent.resolve() / path.name)
    found = []
    for place in dict.fromkeys(places):
        run = place if is_run_dir(place) else enclosing_run_dir(place.parent)
        if run is not None and place.is_relative_to(run):
            found.append((place, run))
    return found


def claim_output(
    path: str | os.PathLike,
    verb: str,
    force: bool = False,
    *,
    kind: str = "directory",
    inputs: tuple[str | os.PathLike, ...] = (),
    signature: bytes | None = None,
) -> Path:
    """Check that ``verb`` may write its output (``kind`` ``directory`` or ``file``) at ``path``.

    Refused with a one-line :class:`ElmforgeError`:
    - a path equal to, inside, or containing one of ``inputs``;
    - a run directory, a name a run reserves inside one (``checkpoints``, ``final``, ...), or an
      existing path inside a run that this verb did not write (new names inside a run are fine:
      ``average --last 5 RUN --out RUN/averaged``);
    - a file where a directory goes and the reverse;
    - an existing non-empty directory that is not this verb's earlier output, or is, without
      ``force``; an existing file without ``force``.

    Directories record the verb that wrote them (a marker file); files cannot, so outside a run
    ``force`` replaces a file whoever wrote it, and inside a run only a file that begins with
    ``signature`` (the verb's format, e.g. ``b"GGUF"``) counts as the verb's own.
    """
    path = Path(path)
    resolved = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if resolved == source or source in resolved.parents:
            raise ElmforgeError(f"{path}: the output must not be inside the input {given}")
        if resolved in source.parents:
            raise ElmforgeError(f"{path}: the output must not contain the input {given}")
    for where, run in _run_positions(path):
        if where == run:
            raise ElmforgeError(f"{path}: is a run directory; a run is never replaced")
        top = where.relative_to(run).parts[0]
        if kind == "directory":
            ours = output_verb(path) == verb
        else:
            ours = signature is not None and _begins_with(path, signature)
        if top in RESERVED_NAMES or ((path.exists() or path.is_symlink()) and not ours):
            raise ElmforgeError(f"{path}: belongs to the run directory {run}; pick another path")
    if not path.exists() and not path.is_symlink():
        return path
    if kind == "directory":
        if not path.is_dir():
            raise ElmforgeError(f"{path}: exists and is not a directory")
        if not any(path.iterdir()):
            return path
        previous = output_verb(path)
        if previous != verb:
            what = f"the output of `elmforge {previous}`" if previous else "not an elmforge output"
            raise ElmforgeError(f"{path}: exists and is {what}; pick another path")
        if not force:
            raise ElmforgeError(
                f"{path}: exists (an earlier `elmforge {verb}`); {{option}} replaces it",
                option="force",
            )
        return path
    if path.is_dir():
        raise ElmforgeError(f"{path}: is a directory, expected a file path")
    if not force:
        raise ElmforgeError(f"{path}: exists; {{option}} replaces it", option="force")
    return path


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of this module's temporaries (``.X.tmp-*``, ``.X.old-*``)."""
    return _TEMPORARY.match(name) is not None


def claim_work_directory(
    path: str | os.PathLike, holds: Collection[str], what: str, inputs: tuple = ()
) -> Path:
    """Check that ``path`` can be the directory of ``what`` (a run, the demo): new, empty, or
    holding nothing but the names in ``holds`` (what an earlier, maybe interrupted, run of it
    wrote) and temporaries. Anything else in it is the user's, and is refused; so is a directory
    inside one of a run's reserved names (``RUN/checkpoints/x``) or inside ``inputs``.
    """
    path = Path(path)
    for given in inputs:
        source = Path(given).resolve()
        if path.resolve() == source or source in path.resolve().parents:
            raise ElmforgeError(f"{path}: the output must not be inside the input {given}")
    if path.is_symlink() and not path.exists():
        raise ElmforgeError(f"{path}: a dangling symbolic link")
    if path.exists() and not path.is_dir():
        raise ElmforgeError(f"{path}: exists and is not a directory (expected {what})")
    for where, run in _run_positions(path):
        if where != run and where.relative_to(run).parts[0] in RESERVED_NAMES:
            raise ElmforgeError(f"{path}: belongs to the run directory {run}; pick another path")
    if path.is_dir():
        try:
            names = sorted(p.name for p in path.iterdir())
        except OSError as err:
            raise disk_error(path, err) from None
        foreign = [name for name in names if name not in holds and not is_temporary(name)]
        if foreign:
            raise ElmforgeError(
                f"{path}: holds {foreign[0]!r}, which is not part of {what}; pick a new or "
                "empty directory"
            )
    return path
