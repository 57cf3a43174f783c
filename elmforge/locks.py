"""One writer per run directory: an advisory lock that dies with its holder.

``pretrain``, ``finetune`` and the study runner hold their output directory while they write it,
so a second process started on the same ``--out`` refuses at once, naming the process that holds
it, instead of both writing checkpoints and metrics over each other. The lock is ``flock`` on the
directory itself (no lock file: nothing is left behind, a failed command changes nothing in the
directory), and the kernel drops it when its holder exits however it exits, so a run killed with
SIGKILL is resumed by the same command without any clean-up. Ranks of one ``torchrun`` share the
directory: only the launcher's rank 0 takes the lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from elmforge.errors import ElmforgeError

PROC_LOCKS = Path("/proc/locks")


class DirectoryBusyError(ElmforgeError):
    """Another process holds the directory."""


def lock_holder(directory: str | os.PathLike) -> int | None:
    """The PID holding an ``flock`` on ``directory`` (Linux's ``/proc/locks``), None where it
    cannot be told."""
    try:
        info = os.stat(directory)
        lines = PROC_LOCKS.read_text().splitlines()
    except OSError:
        return None
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF" ("->" marks a waiter: skipped)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            with contextlib.suppress(ValueError):
                return int(fields[4])
    return None


def is_launcher_rank_zero() -> bool:
    """Whether this process is rank 0 of its launch (any process outside ``torchrun``)."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def hold_directory(directory: str | os.PathLike, verb: str) -> Iterator[Path]:
    """Hold ``directory`` (created if missing, and removed again on exit if it is still empty)
    for ``elmforge VERB`` while the block runs; a directory another process holds is a one-line
    :class:`DirectoryBusyError` naming its PID. Other ranks of a ``torchrun`` launch share rank
    0's hold and take none."""
    import fcntl

    path = Path(directory)
    if not is_launcher_rank_zero():
        yield path
        return
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:  # under a file, on a read-only or pseudo file system
        raise ElmforgeError(f"{path}: cannot create the directory ({err.strerror})") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(path)
            who = f"process {holder}" if holder else "another process"
            raise DirectoryBusyError(
                f"{path}: {who} is writing to this directory (another elmforge run on the same "
                f"--out); wait for it to finish or stop it, then run `elmforge {verb}` again"
            ) from None
        try:
            yield path
        finally:
            if created:
                with contextlib.suppress(OSError):  # not empty: the run wrote something
                    path.rmdir()
    finally:
        os.close(descriptor)  # releases the lock
