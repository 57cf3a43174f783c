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
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from elmforge.errors import ElmforgeError
from elmforge.train.run_dir import RESERVED_NAMES, enclosing_run_dir, is_run_dir

OUTPUT_MARKER = ".elmforge-output"
_TEMP_TAGS = (".tmp-", ".old-")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def _write_failed(path: Path, probe: Path, err: BaseException) -> BaseException:
    """The error to raise for a write of ``path`` that failed with ``err`` (``probe``: a
    directory on the same filesystem): one line naming ``path``, never the temporary."""
    if isinstance(err, OSError):
        return disk_error(path, err)
    if isinstance(err, ElmforgeError):
        return err
    if _disk_is_full(probe):
        return disk_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return err


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
        raised = _write_failed(path, path.parent, err)
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
    """
    final = Path(final)
    _make_parent(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as err:
        raise disk_error(final, err) from None
    old: Path | None = None
    try:
        _apply_umask(tmp, directory=True)
        yield tmp
        if verb is not None:
            (tmp / OUTPUT_MARKER).write_text(json.dumps({"verb": verb}) + "\n", encoding="utf-8")
        _finish_tree(tmp)
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            try:
                tmp.rename(final)
            except OSError:
                old.rename(final)  # put the previous output back
                old = None
                raise
        else:
            tmp.rename(final)
        fsync_dir(final.parent)
    except Exception as err:
        raised = _write_failed(final, final.parent, err)
        if isinstance(raised, ElmforgeError) and str(tmp) in str(raised):
            # A nested write named a file in the temporary directory: name the output instead.
            raised = _renamed(raised, str(tmp), str(final))
        if raised is err:
            raise
        raise raised from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            _remove(old)


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


def clean_temporaries(directory: str | os.PathLike, prefix: str = "") -> None:
    """Remove the temporaries a killed write left in ``directory`` (names ``.X.tmp-*``/``.X.old-*``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        name = path.name
        if name.startswith("." + prefix) and is_temporary(name):
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
    if is_run_dir(path):
        raise ElmforgeError(f"{path}: is a run directory; a run is never replaced")
    run = enclosing_run_dir(path.parent)
    if run is not None:
        top = resolved.relative_to(run).parts[0]
        if kind == "directory":
            ours = output_verb(path) == verb
        else:
            ours = signature is not None and _begins_with(path, signature)
        if top in RESERVED_NAMES or (path.exists() and not ours):
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
                f"{path}: exists (an earlier `elmforge {verb}`); --force replaces it"
            )
        return path
    if path.is_dir():
        raise ElmforgeError(f"{path}: is a directory, expected a file path")
    if not force:
        raise ElmforgeError(f"{path}: exists; --force replaces it")
    return path


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of this module's temporaries (``.X.tmp-*``, ``.X.old-*``)."""
    return name.startswith(".") and any(tag in name for tag in _TEMP_TAGS)


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
    run = enclosing_run_dir(path.parent)
    if run is not None and path.resolve().relative_to(run).parts[0] in RESERVED_NAMES:
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
